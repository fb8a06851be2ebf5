/** Thin gRPC handlers of coursemesh.notifier.v1.NotificationService: proto ⇄ domain, errors → status codes. */
import { createHash } from "node:crypto";
import {
  Channel,
  NotificationServiceService,
  NotificationStatus,
  SubscriptionStatus,
  type Notification,
  type NotificationServiceServer,
  type Subscription,
  type SubscriptionFilter,
} from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import type { Principal } from "@coursemesh/shared/auth";
import type { Sql } from "@coursemesh/shared/db";
import { invalidArgument, permissionDenied } from "@coursemesh/shared/grpc/errors";
import { defineService, type ServiceRegistration } from "@coursemesh/shared/grpc/server";
import { assertMaySubscribe, normalizeEmail, seesAll, type ChannelName, type FilterKind, type Target } from "./recipients.ts";
import type { SendTestInput } from "./sender.ts";
import * as store from "./store.ts";
import type { DeliveryRow, DeliveryStatusName, SubscriptionRow } from "./store.ts";
import { confirm, subscribe, unsubscribe, type SubscriptionSettings } from "./subscriptions.ts";

export interface NotifierApiDeps {
  sql: Sql;
  settings: SubscriptionSettings;
  sendTest(input: SendTestInput): Promise<DeliveryRow>;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 1000;

const CHANNEL_NAMES: Partial<Record<Channel, ChannelName>> = { [Channel.CHANNEL_EMAIL]: "EMAIL", [Channel.CHANNEL_WEBHOOK]: "WEBHOOK" };
const CHANNELS: Record<ChannelName, Channel> = { EMAIL: Channel.CHANNEL_EMAIL, WEBHOOK: Channel.CHANNEL_WEBHOOK };
const FILTER_CASES: Record<string, FilterKind> = { monitorId: "monitor", courseId: "course", studentId: "student", jobId: "job" };
const FILTER_FIELDS: Record<FilterKind, "monitorId" | "courseId" | "studentId" | "jobId"> = {
  monitor: "monitorId",
  course: "courseId",
  student: "studentId",
  job: "jobId",
};
const DELIVERY_STATUSES: Record<DeliveryStatusName, NotificationStatus> = {
  PENDING: NotificationStatus.NOTIFICATION_STATUS_PENDING,
  SENT: NotificationStatus.NOTIFICATION_STATUS_SENT,
  FAILED: NotificationStatus.NOTIFICATION_STATUS_FAILED,
  COALESCED: NotificationStatus.NOTIFICATION_STATUS_COALESCED,
  SUPPRESSED: NotificationStatus.NOTIFICATION_STATUS_SUPPRESSED,
};

function channelName(channel: Channel): ChannelName {
  const name = CHANNEL_NAMES[channel];
  if (!name) {
    throw invalidArgument("CHANNEL_REQUIRED", "channel must be CHANNEL_EMAIL or CHANNEL_WEBHOOK", {
      fieldViolations: [{ field: "channel", description: "required" }],
    });
  }
  return name;
}

function targetOf(filter: SubscriptionFilter | undefined): Target | undefined {
  const target = filter?.target;
  if (!target) return undefined;
  return { kind: FILTER_CASES[target.$case]!, value: target.value };
}

function toFilter(kind: FilterKind, value: string): SubscriptionFilter {
  return { target: { $case: FILTER_FIELDS[kind], value } as SubscriptionFilter["target"] };
}

/** A subscription as the API shows it (never its secret or tokens). */
export function toSubscription(row: SubscriptionRow): Subscription {
  return {
    id: row.id,
    channel: CHANNELS[row.channel],
    address: row.address,
    filter: toFilter(row.filter_kind, row.filter_value),
    status: row.status === "ACTIVE" ? SubscriptionStatus.SUBSCRIPTION_STATUS_ACTIVE : SubscriptionStatus.SUBSCRIPTION_STATUS_PENDING,
    owner: row.owner,
    hasSecret: row.secret !== null,
    createdAt: row.created_at,
    confirmedAt: row.confirmed_at ?? undefined,
  };
}

/** A delivery as the API shows it. */
export function toNotification(row: DeliveryRow): Notification {
  return {
    id: row.id,
    eventId: row.event_id ?? "",
    channel: CHANNELS[row.channel],
    recipient: row.recipient,
    subject: row.subject,
    status: DELIVERY_STATUSES[row.status],
    attempts: row.attempts,
    lastError: row.last_error ?? "",
    createdAt: row.created_at,
    sentAt: row.sent_at ?? undefined,
    subscriptionId: row.subscription_id ?? "",
    eventType: row.event_type,
    monitorId: row.monitor_id ?? "",
    courseId: row.course_id ?? "",
    studentId: row.student_id ?? "",
    jobId: row.job_id ?? "",
    nextAttemptAt: row.next_attempt_at ?? undefined,
  };
}

function pageSize(requested: number): number {
  // 0 (and, forgivingly, a negative number) means the default.
  return Math.min(requested > 0 ? requested : DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
}

// Page tokens carry the last id and a fingerprint of the query, so a token is refused for another query.
function fingerprint(query: unknown): string {
  return createHash("sha256").update(JSON.stringify(query)).digest("base64url").slice(0, 12);
}

function encodePageToken(lastId: string, query: unknown): string {
  return Buffer.from(JSON.stringify({ after: lastId, q: fingerprint(query) })).toString("base64url");
}

function decodePageToken(token: string, query: unknown): string | undefined {
  if (!token) return undefined;
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { after?: unknown; q?: unknown };
    if (typeof parsed.after === "string" && UUID.test(parsed.after) && parsed.q === fingerprint(query)) return parsed.after;
  } catch {
    // fall through to the error below
  }
  throw invalidArgument("INVALID_PAGE_TOKEN", "page_token is not one this service issued for this query; start again without it", {
    fieldViolations: [{ field: "page_token", description: "use next_page_token from the previous page of the same query" }],
  });
}

/** Recipients are stored normalised (lower-cased email, parsed URL), so a filter is normalised the same way. */
function normalizedRecipient(raw: string): string | undefined {
  const trimmed = raw.trim();
  if (!trimmed) return undefined;
  if (!trimmed.includes("://")) return trimmed.toLowerCase();
  try {
    return new URL(trimmed).href;
  } catch {
    return trimmed;
  }
}

function requireId(value: string, field: string): string {
  if (!UUID.test(value.trim())) {
    throw invalidArgument("INVALID_ID", `${field} "${value.slice(0, 80)}" is not a valid id`, { fieldViolations: [{ field, description: "must be a UUID" }] });
  }
  return value.trim().toLowerCase();
}

/** Who owns what the caller creates: the caller, or for services and operators, `owner` if given. */
function ownerFor(principal: Principal, requestedOwner: string, ownerEmail: string): { owner: string; ownerEmail?: string } {
  if (!requestedOwner) {
    if (ownerEmail) throw invalidArgument("ADDRESS_INVALID", "owner_email goes with owner (subscribing on someone's behalf)", { fieldViolations: [{ field: "owner_email", description: "only with owner" }] });
    return { owner: principal.subject, ownerEmail: principal.email };
  }
  if (!seesAll(principal)) throw permissionDenied("FILTER_NOT_ALLOWED", "only services and operators may subscribe on behalf of another owner");
  return { owner: requestedOwner.trim(), ownerEmail: ownerEmail ? normalizeEmail(ownerEmail, "owner_email") : undefined };
}

/** The NotificationService registration: handlers plus who may call each RPC. */
export function notificationService(deps: NotifierApiDeps): ServiceRegistration {
  const { sql } = deps;
  return defineService<NotificationServiceServer>(
    NotificationServiceService,
    {
      async subscribe(request, ctx) {
        const principal = ctx.principal!;
        const channel = channelName(request.channel);
        const target = targetOf(request.filter);
        if (!target) {
          throw invalidArgument("FILTER_REQUIRED", "filter needs one of monitor_id, course_id, student_id or job_id", {
            fieldViolations: [{ field: "filter", description: "set one target" }],
          });
        }
        const { owner, ownerEmail } = ownerFor(principal, request.owner, request.ownerEmail);
        assertMaySubscribe(principal, target);
        const result = await subscribe(sql, deps.settings, { owner, ownerEmail, channel, address: request.address, target, secret: request.secret || undefined });
        return { subscription: toSubscription(result.subscription), secret: result.generatedSecret ?? "", created: result.created };
      },

      async unsubscribe(request, ctx) {
        const id = requireId(request.id, "id");
        await unsubscribe(sql, id, seesAll(ctx.principal) ? undefined : ctx.principal!.subject);
        return {};
      },

      async listSubscriptions(request, ctx) {
        const limit = pageSize(request.pageSize);
        const target = targetOf(request.filter);
        const query = {
          owner: seesAll(ctx.principal) ? undefined : ctx.principal!.subject,
          channel: request.channel === Channel.CHANNEL_UNSPECIFIED ? undefined : channelName(request.channel),
          target: target ? { kind: target.kind, value: target.value.trim() } : undefined,
        };
        const beforeId = decodePageToken(request.pageToken, query);
        const rows = await store.listSubscriptions(sql, { ...query, beforeId, limit: limit + 1 });
        const page = rows.slice(0, limit);
        return {
          subscriptions: page.map(toSubscription),
          nextPageToken: rows.length > limit ? encodePageToken(page[page.length - 1]!.id, query) : "",
        };
      },

      async confirmSubscription(request) {
        return { subscription: toSubscription(await confirm(sql, request.token)) };
      },

      async listNotifications(request, ctx) {
        const limit = pageSize(request.pageSize);
        const status = Object.entries(DELIVERY_STATUSES).find(([, value]) => value === request.status)?.[0] as DeliveryStatusName | undefined;
        const query = {
          owner: seesAll(ctx.principal) ? undefined : ctx.principal!.subject,
          monitorId: request.monitorId.trim().toLowerCase() || undefined,
          courseId: request.courseId.trim().toLowerCase() || undefined,
          studentId: request.studentId.trim() || undefined,
          jobId: request.jobId.trim().toLowerCase() || undefined,
          recipient: normalizedRecipient(request.recipient),
          eventId: request.eventId.trim() || undefined,
          status,
        };
        const beforeId = decodePageToken(request.pageToken, query);
        const rows = await store.listDeliveries(sql, { ...query, beforeId, limit: limit + 1 });
        const page = rows.slice(0, limit);
        return {
          notifications: page.map(toNotification),
          nextPageToken: rows.length > limit ? encodePageToken(page[page.length - 1]!.id, query) : "",
        };
      },

      async sendTest(request, ctx) {
        const channel = channelName(request.channel);
        const row = await deps.sendTest({ principal: ctx.principal!, channel, address: request.address });
        return { notification: toNotification(row) };
      },
    },
    {
      subscribe: "authenticated",
      unsubscribe: "authenticated",
      listSubscriptions: "authenticated",
      // The emailed token is the credential.
      confirmSubscription: "public",
      listNotifications: "authenticated",
      sendTest: "authenticated",
    },
  );
}
