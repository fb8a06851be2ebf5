-- The event_id of the seats.changed event each change produced, so its notifications (which carry
-- that event_id) pair with it exactly. Null for changes recorded before it was kept.
alter table seat_changes add column event_id uuid;
