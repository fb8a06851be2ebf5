/**
 * Email over SMTP with nodemailer's pooled transport: a few long-lived connections shared by every
 * send (TLS and auth from NOTIFIER_SMTP_URL), and a reading of SMTP replies into "retry later" or
 * "give up".
 */
import { randomBytes } from "node:crypto";
import nodemailer from "nodemailer";
import MailComposer from "nodemailer/lib/mail-composer";
import { encodeWord, foldLines, hasLongerLines, isPlainText } from "nodemailer/lib/mime-funcs";
import { encode as quotedPrintable, wrap as wrapQuotedPrintable } from "nodemailer/lib/qp";
import type SMTPPool from "nodemailer/lib/smtp-pool";
import type { Message } from "./messages.ts";

/** One email ready to go. */
export interface OutgoingEmail {
  to: string;
  message: Message;
  /** Stable per delivery, so a resend after a crash is recognisably the same message. */
  messageId: string;
  unsubscribeUrl?: string;
}

export interface EmailTransport {
  /** Resolves when the SMTP server accepted the message; throws a DeliveryError otherwise. */
  send(email: OutgoingEmail): Promise<void>;
  close(): void;
}

/** A failed attempt: `permanent` means retrying cannot help (SMTP 5xx, webhook 4xx). */
export class DeliveryError extends Error {
  override name = "DeliveryError";
  constructor(
    message: string,
    readonly permanent: boolean,
    /** A delay the receiver asked for (Retry-After), if any. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** The domain of the From address, used on the right of every Message-ID. */
export function mailDomain(from: string): string {
  const match = /@([^>\s]+)>?\s*$/.exec(from);
  return match?.[1]?.toLowerCase() ?? "coursemesh.localhost";
}

/** Turns a nodemailer error into a DeliveryError: SMTP 5xx replies are permanent, the rest transient. */
export function classifySmtpError(error: unknown): DeliveryError {
  const err = error as { responseCode?: number; code?: string; response?: string; message?: string };
  const text = (err.response ?? err.message ?? String(error)).replace(/\s+/g, " ").trim().slice(0, 500);
  // A wrong password is a configuration problem an operator fixes; the mail itself is fine.
  if (err.code === "EAUTH") return new DeliveryError(`SMTP authentication failed: ${text}`, false);
  if (typeof err.responseCode === "number") {
    return new DeliveryError(`SMTP ${err.responseCode}: ${text}`, err.responseCode >= 500);
  }
  return new DeliveryError(`SMTP ${err.code ?? "error"}: ${text}`, false);
}

/** The From header exactly as nodemailer writes it (display name encoded, folded), made once per transport. */
export async function fromHeaderOf(from: string): Promise<string> {
  const raw = (await new MailComposer({ from, to: "nobody@example.invalid", text: "" }).compile().build()).toString("latin1");
  const header = /^From: .*(?:\r\n[ \t].*)*/m.exec(raw)?.[0];
  if (!header) throw new Error(`nodemailer wrote no From header for ${JSON.stringify(from)}`);
  return header;
}

// RFC 2047: Q for mostly-latin text, B otherwise (nodemailer's own rule).
const wordEncoding = (value: string): "Q" | "B" => {
  const nonLatin = value.match(/[\x00-\x08\x0b\x0c\x0e-\x1f\u0080-\uffff]/g)?.length ?? 0;
  const latin = value.match(/[A-Za-z]/g)?.length ?? 0;
  return nonLatin < latin ? "Q" : "B";
};

/** A text part: 7bit when it is short-lined ASCII, quoted-printable otherwise; CRLF line ends. */
function textPart(contentType: string, content: string): string {
  const crlf = content.replace(/\r?\n/g, "\r\n");
  const plain = isPlainText(crlf) && !hasLongerLines(crlf, 76);
  const body = plain ? crlf : wrapQuotedPrintable(quotedPrintable(Buffer.from(crlf, "utf8")), 76);
  return `Content-Type: ${contentType}; charset=utf-8\r\nContent-Transfer-Encoding: ${plain ? "7bit" : "quoted-printable"}\r\n\r\n${body}`;
}

/**
 * A notification as an RFC 5322 message: multipart/alternative (text, then HTML). nodemailer does
 * the encoding (RFC 2047 words, folding, quoted-printable, the From header); the layout is fixed,
 * so MailComposer's per-message header bookkeeping and stream pipeline — most of the sender's CPU —
 * are skipped. Undefined when the recipient or Message-ID is not plain ASCII (MailComposer handles those).
 */
export function composeEmail(email: OutgoingEmail, fromHeader: string, date = new Date()): Buffer | undefined {
  const plainHeader = (value: string) => isPlainText(value) && !/[\s"<>(),;:\\[\]]/.test(value);
  if (!plainHeader(email.to) || !/^<[\x21-\x7e]+>$/.test(email.messageId)) return undefined;
  if (email.unsubscribeUrl !== undefined && !/^[\x21-\x7e]+$/.test(email.unsubscribeUrl)) return undefined;
  const subject = email.message.subject.replace(/[\r\n]+/g, " ");
  const needsWords = /["\u0080-\uffff]|=\?/.test(subject);
  const boundary = `--_cm-${randomBytes(12).toString("hex")}`;
  const headers = [
    "Auto-Submitted: auto-generated",
    ...(email.unsubscribeUrl ? [foldLines(`List-Unsubscribe: <${email.unsubscribeUrl}>`, 76), "List-Unsubscribe-Post: List-Unsubscribe=One-Click"] : []),
    fromHeader,
    `To: ${email.to}`,
    foldLines(`Subject: ${needsWords ? encodeWord(subject, wordEncoding(subject), 52) : subject}`, 76),
    `Message-ID: ${email.messageId}`,
    `Date: ${date.toUTCString().replace(/GMT/, "+0000")}`,
    "MIME-Version: 1.0",
    `Content-Type: multipart/alternative; boundary="${boundary}"`,
  ];
  return Buffer.from(
    `${headers.join("\r\n")}\r\n\r\n--${boundary}\r\n${textPart("text/plain", email.message.text)}\r\n--${boundary}\r\n${textPart("text/html", email.message.html)}\r\n--${boundary}--\r\n`,
    "latin1",
  );
}

export interface SmtpOptions {
  url: string;
  from: string;
  poolSize: number;
}

/** A pooled nodemailer transport: connections stay open between messages (the baseline opens one per email). */
export function createSmtpTransport(options: SmtpOptions): EmailTransport {
  const transporter = nodemailer.createTransport({
    url: options.url,
    pool: true,
    maxConnections: options.poolSize,
    maxMessages: Infinity,
    // Fail fast on a dead server so the delivery is retried with backoff instead of hanging a worker.
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 30_000,
  } satisfies SMTPPool.Options);
  const envelopeFrom = /<([^>]+)>/.exec(options.from)?.[1] ?? options.from.trim();
  let fromHeader: Promise<string> | undefined;
  return {
    async send(email) {
      const headers: Record<string, string> = { "Auto-Submitted": "auto-generated" };
      if (email.unsubscribeUrl) {
        headers["List-Unsubscribe"] = `<${email.unsubscribeUrl}>`;
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click";
      }
      // The message is built into one buffer first: the pooled connection then writes it in a few
      // large writes instead of a stream of small ones (socket writes dominated the send path).
      const raw =
        composeEmail(email, await (fromHeader ??= fromHeaderOf(options.from))) ??
        (await new MailComposer({
          from: options.from,
          to: email.to,
          subject: email.message.subject,
          text: email.message.text,
          html: email.message.html,
          messageId: email.messageId,
          headers,
        })
          .compile()
          .build());
      try {
        await transporter.sendMail({ envelope: { from: envelopeFrom, to: [email.to] }, raw });
      } catch (error) {
        throw classifySmtpError(error);
      }
    },
    close() {
      transporter.close();
    },
  };
}
