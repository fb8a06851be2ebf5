-- Time-ordered ids (UUIDv7, RFC 9562) made inside a statement, so one event's deliveries are
-- written by a single INSERT … SELECT: 48 bits of Unix milliseconds over a random v4, with the
-- version nibble turned from 4 (0100) into 7 (0111). Postgres 15 has no built-in for it.
create function uuid_v7() returns uuid
language sql volatile parallel safe
as $$
  select encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              placing substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
              from 1 for 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;
