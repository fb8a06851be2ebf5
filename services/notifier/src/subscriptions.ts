/**
 * Subscriptions: subscribe (idempotent, double opt-in for other people's addresses), confirm and
 * unsubscribe. Each state change is one transaction; a confirmation email is a delivery row written
 * in the same transaction, so it is sent (and retried) by the sender loop like any notification.
 */
import { failedPrecondition, invalidArgument, notFound } from "@coursemesh/shared/grpc/errors";
import { transaction, type Sql, type Tx } from "@coursemesh/shared/db";
import { confirmationMessage } from "./messages.ts";
import {
  describeTarget,
  hashToken,
  newLinkToken,
  newWebhookSecret,
  normalizeEmail,
  normalizeWebhookUrl,
  validateTarget,
  type ChannelName,
  type Target,
  type UrlGuard,
} from "./recipients.ts";
import * as store from "./store.ts";
import type { SubscriptionRow } from "./store.ts";

export interface SubscriptionSettings {
  publicUrl: string;
  confirmTtlMs: number;
  guard: UrlGuard;
  /** Local development: every subscription is active at once. */
  authDisabled: boolean;
  /** Called after a commit that made something to send. */
  wake: () => void;
}

export interface SubscribeInput {
  owner: string;
  /** The owner's own address (token `email` claim): subscribing it needs no confirmation. */
  ownerEmail?: string;
  channel: ChannelName;
  address: string;
  target: Target;
  secret?: string;
}

export interface SubscribeResult {
  subscription: SubscriptionRow;
  created: boolean;
  /** The webhook secret the service made, returned once. */
  generatedSecret?: string;
}

/** Links in emails, on the notifier's public HTTP address. */
export function confirmLink(publicUrl: string, token: string): string {
  return new URL(`/v1/subscriptions/confirm?token=${encodeURIComponent(token)}`, publicUrl).href;
}

/** The one-click unsubscribe link of a subscription. */
export function unsubscribeLink(publicUrl: string, token: string): string {
  return new URL(`/v1/subscriptions/unsubscribe?token=${encodeURIComponent(token)}`, publicUrl).href;
}

function validateSecret(channel: ChannelName, secret: string | undefined): string | undefined {
  if (!secret) return undefined;
  if (channel !== "WEBHOOK") {
    throw invalidArgument("SECRET_INVALID", "a secret applies to webhooks only; leave it empty for email", {
      fieldViolations: [{ field: "secret", description: "only for WEBHOOK" }],
    });
  }
  const whsec = secret.startsWith("whsec_") ? Buffer.from(secret.slice(6), "base64") : undefined;
  if (secret.length < 16 || secret.length > 256 || (whsec && whsec.length < 16)) {
    throw invalidArgument("SECRET_INVALID", "a webhook secret needs 16 to 256 characters (or whsec_ and at least 16 bytes of base64); leave it empty to get one", {
      fieldViolations: [{ field: "secret", description: "16 to 256 characters" }],
    });
  }
  return secret;
}

async function writeConfirmation(tx: Tx, settings: SubscriptionSettings, subscription: SubscriptionRow): Promise<SubscriptionRow> {
  const token = newLinkToken();
  const updated = await store.replaceConfirmToken(tx, subscription.id, hashToken(token), new Date(Date.now() + settings.confirmTtlMs));
  const target = { kind: updated.filter_kind, value: updated.filter_value };
  const payload = {
    confirm_url: confirmLink(settings.publicUrl, token),
    owner: updated.owner,
    about: describeTarget(target),
    expires_at: updated.confirm_expires_at!.toISOString(),
  };
  await store.insertDelivery(tx, {
    id: Bun.randomUUIDv7(),
    eventId: null,
    eventType: "subscription.confirm",
    subscriptionId: updated.id,
    owner: updated.owner,
    channel: "EMAIL",
    recipient: updated.address,
    subject: confirmationMessage(payload).subject,
    payload,
    nextAttemptAt: new Date(),
  });
  return updated;
}

/** Validates and creates a subscription, or returns the owner's identical one (idempotent). */
export async function subscribe(sql: Sql, settings: SubscriptionSettings, input: SubscribeInput): Promise<SubscribeResult> {
  const target = validateTarget(input.target);
  const address =
    input.channel === "EMAIL" ? normalizeEmail(input.address) : await normalizeWebhookUrl(input.address, settings.guard);
  const givenSecret = validateSecret(input.channel, input.secret);
  const ownAddress = input.ownerEmail !== undefined && input.channel === "EMAIL" && input.ownerEmail.trim().toLowerCase() === address;
  // Webhooks are the caller's own endpoint (and pass the SSRF guard); only someone else's mailbox needs consent.
  const active = settings.authDisabled || input.channel === "WEBHOOK" || ownAddress;
  const generatedSecret = input.channel === "WEBHOOK" && !givenSecret ? newWebhookSecret() : undefined;

  const result = await transaction(sql, "notifier.subscribe", async (tx) => {
    const inserted = await store.insertSubscription(tx, {
      id: Bun.randomUUIDv7(),
      owner: input.owner,
      channel: input.channel,
      address,
      target,
      active,
      secret: input.channel === "WEBHOOK" ? (givenSecret ?? generatedSecret!) : null,
      confirmTokenHash: null,
      confirmExpiresAt: null,
      unsubscribeToken: newLinkToken(),
    });
    if (inserted) {
      const subscription = inserted.status === "PENDING" ? await writeConfirmation(tx, settings, inserted) : inserted;
      return { subscription, created: true, generatedSecret };
    }
    const existing = (await store.findSubscriptionForUpdate(tx, input.owner, input.channel, address, target))!;
    if (existing.status === "PENDING" && active) {
      // The owner's own address (or local development): consent is implied now.
      return { subscription: await store.activateSubscription(tx, existing.id), created: false };
    }
    if (existing.status === "PENDING" && (existing.confirm_expires_at ?? new Date(0)) < new Date()) {
      // The link expired: a new one, once per expiry, so repeated calls cannot flood the address.
      return { subscription: await writeConfirmation(tx, settings, existing), created: false };
    }
    return { subscription: existing, created: false };
  });
  if (result.subscription.status === "PENDING") settings.wake();
  return result;
}

/** Activates the subscription a confirmation token belongs to (double opt-in). */
export async function confirm(sql: Sql, token: string): Promise<SubscriptionRow> {
  if (!token.trim()) {
    throw invalidArgument("CONFIRMATION_TOKEN_INVALID", "the confirmation token is empty; use the link from the confirmation email", {
      fieldViolations: [{ field: "token", description: "required" }],
    });
  }
  return transaction(sql, "notifier.confirm_subscription", async (tx) => {
    const subscription = await store.findByConfirmToken(tx, hashToken(token.trim()));
    if (!subscription) {
      throw notFound("CONFIRMATION_TOKEN_INVALID", "this confirmation link is not valid (it may have been replaced by a newer one, or the subscription was removed)");
    }
    if (subscription.status === "ACTIVE") return subscription;
    if ((subscription.confirm_expires_at ?? new Date(0)) < new Date()) {
      throw failedPrecondition("CONFIRMATION_TOKEN_EXPIRED", "this confirmation link has expired; ask for the subscription again to get a new one");
    }
    return store.activateSubscription(tx, subscription.id);
  });
}

/** Deletes a subscription the caller may see; pending notifications for it are not sent. */
export async function unsubscribe(sql: Sql, id: string, visibleTo: string | undefined): Promise<void> {
  await transaction(sql, "notifier.unsubscribe", async (tx) => {
    const subscription = await store.getSubscription(tx, id);
    if (!subscription || (visibleTo !== undefined && subscription.owner !== visibleTo)) {
      throw notFound("SUBSCRIPTION_NOT_FOUND", `no subscription ${id}`);
    }
    await store.deleteSubscription(tx, id);
  });
}

/** Deletes the subscription an unsubscribe link names; undefined when the link is unknown (already done). */
export async function unsubscribeByToken(sql: Sql, token: string): Promise<SubscriptionRow | undefined> {
  return transaction(sql, "notifier.unsubscribe_link", async (tx) => {
    const subscription = await store.findByUnsubscribeToken(tx, token);
    if (subscription) await store.deleteSubscription(tx, subscription.id);
    return subscription;
  });
}
