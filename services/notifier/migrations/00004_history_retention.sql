-- History retention: the pruner deletes finished notifications (every status but PENDING) by the
-- time they were finished with — sent_at when sent, else created_at — oldest first, a batch at a
-- time. The predicate is the pruner's, so the index serves its range scan and holds no PENDING rows.
create index deliveries_finished_at on deliveries ((coalesce(sent_at, created_at))) where status <> 'PENDING';
