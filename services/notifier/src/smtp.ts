/**
 * Email over SMTP with nodemailer's pooled transport: a few long-lived connections shared by every
 * send (TLS and auth from NOTIFIER_SMTP_URL), and a reading of SMTP replies into "retry later" or
 * "give up".
 */
import nodemailer from "nodemailer";
import MailComposer from "nodemailer/lib/mail-composer";
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
  return {
    async send(email) {
      const headers: Record<string, string> = { "Auto-Submitted": "auto-generated" };
      if (email.unsubscribeUrl) {
        headers["List-Unsubscribe"] = `<${email.unsubscribeUrl}>`;
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click";
      }
      // The message is built into one buffer first: the pooled connection then writes it in a few
      // large writes instead of a stream of small ones (socket writes dominated the send path).
      const raw = await new MailComposer({
        from: options.from,
        to: email.to,
        subject: email.message.subject,
        text: email.message.text,
        html: email.message.html,
        messageId: email.messageId,
        headers,
      })
        .compile()
        .build();
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
