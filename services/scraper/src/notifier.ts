/**
 * notify_emails → notifier subscriptions, through coursemesh.notifier.v1.NotificationService on the
 * caller's behalf (their bearer token, so the subscriptions are theirs; the trace continues). All or
 * nothing: if one Subscribe fails, the ones already made are removed again.
 */
import * as grpc from "@grpc/grpc-js";
import { Channel, NotificationServiceClient } from "@coursemesh/proto/coursemesh/notifier/v1/notifier";
import { createClient, unary } from "@coursemesh/shared/grpc/client.ts";
import { decodeGrpcError, invalidArgument, permissionDenied, unauthenticated, unavailable, type ServiceError } from "@coursemesh/shared/grpc/errors.ts";
import type { Logger } from "@coursemesh/shared/logger.ts";

export interface SubscriptionGateway {
  /** Subscribes each address to the monitor's events; returns the subscription ids in order. Throws a ServiceError. */
  subscribe(monitorId: string, emails: readonly string[], token: string | undefined): Promise<string[]>;
  /** Removes subscriptions, best effort (a monitor being deleted must not fail because the notifier is down). */
  unsubscribe(ids: readonly string[], token: string | undefined): Promise<void>;
  close(): void;
}

/** Why a Subscribe failed, as an error of this service's own (reasons from coursemesh.scraper.v1.ErrorReason). */
function asScraperError(error: unknown, address: string, notifierAddress: string): ServiceError {
  const decoded = decodeGrpcError(error);
  switch (decoded.code) {
    case grpc.status.INVALID_ARGUMENT:
      return invalidArgument("EMAIL_INVALID", `the notifier refused ${address}: ${decoded.message}`, { fieldViolations: [{ field: "notify_emails", description: decoded.message }] });
    case grpc.status.PERMISSION_DENIED:
      return permissionDenied("ROLE_REQUIRED", `the notifier refused the subscription for ${address}: ${decoded.message}`);
    case grpc.status.UNAUTHENTICATED:
      return unauthenticated(decoded.reason ?? "TOKEN_INVALID", `the notifier did not accept the token: ${decoded.message}`);
    default:
      return unavailable(
        "NOTIFIER_UNAVAILABLE",
        `the notifier (${notifierAddress}) could not be reached to subscribe ${address} (${grpc.status[decoded.code] ?? decoded.code}: ${decoded.message}); nothing was created, retry shortly`,
        { retryDelayMs: 2000 },
      );
  }
}

/** A gateway to the notifier at `address`. */
export function createNotifierGateway(address: string, timeoutMs: number, logger: Logger): SubscriptionGateway {
  const client = createClient(NotificationServiceClient, address, {
    caller: "scraper",
    defaultDeadlineMs: timeoutMs,
    // Subscribe is idempotent on channel+address+filter, so a retry cannot make a second one.
    idempotentMethods: ["Subscribe", "Unsubscribe"],
  });

  async function unsubscribe(ids: readonly string[], token: string | undefined): Promise<void> {
    await Promise.all(
      ids.map((id) =>
        unary(client.unsubscribe.bind(client), { id }, { token, deadlineMs: timeoutMs }).catch((error) => {
          const decoded = decodeGrpcError(error);
          if (decoded.code !== grpc.status.NOT_FOUND) logger.warn({ subscriptionId: id, code: decoded.code, message: decoded.message }, "could not remove a notifier subscription");
        }),
      ),
    );
  }

  return {
    async subscribe(monitorId, emails, token) {
      const ids: string[] = [];
      for (const email of emails) {
        try {
          const response = await unary(
            client.subscribe.bind(client),
            { channel: Channel.CHANNEL_EMAIL, address: email, filter: { target: { $case: "monitorId", value: monitorId } }, secret: "", owner: "", ownerEmail: "" },
            { token, deadlineMs: timeoutMs },
          );
          ids.push(response.subscription!.id);
        } catch (error) {
          await unsubscribe(ids, token);
          throw asScraperError(error, email, address);
        }
      }
      return ids;
    },
    unsubscribe,
    close: () => client.close(),
  };
}
