/** Events (DESIGN.md §Events): streams, the transactional outbox and its relay, the consumer loop. */
export {
  consumerName,
  deleteStreams,
  prefixedSubject,
  provisionStreams,
  STREAM_DEFINITIONS,
  STREAM_NAMES,
  streamConfig,
  streamForSubject,
  streamName,
  subjectMatches,
  subjectsOverlap,
  unprefixedSubject,
  type ProvisionOptions,
  type StreamDefinition,
  type StreamLimits,
  type StreamName,
} from "./streams.ts";
export { enqueue, enqueueMany, eventIdPrefixSql, eventIdSql, insertOutboxRows, MAX_EVENT_BYTES, onOutboxWrite, type OutboxEvent } from "./outbox.ts";
export { startRelay, type PublishedEvent, type Relay, type RelayOptions } from "./relay.ts";
export {
  isInfrastructureError,
  parseEvent,
  PoisonEventError,
  startConsumer,
  type BatchEventHandler,
  type ConsumedEvent,
  type ConsumeOutcome,
  type ConsumerOptions,
  type EventHandler,
  type RunningConsumer,
} from "./consumer.ts";
export {
  createEventPublisher,
  EventHeader,
  eventHeaders,
  headersToObject,
  JSON_CONTENT_TYPE,
  publishEvent,
  storedTraceContext,
  type EventAck,
  type EventPublisher,
  type PublishContext,
  type WireEvent,
} from "./publish.ts";
