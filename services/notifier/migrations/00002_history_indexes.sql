-- Deleting a subscription sets deliveries.subscription_id to null (the FK action), which needs an
-- index over every delivery of the subscription, not only the PENDING ones; and the history is
-- listed per monitor, course, student, job and recipient, newest first.
create index deliveries_by_subscription_all on deliveries (subscription_id);
drop index deliveries_by_subscription;
create index deliveries_by_monitor on deliveries (monitor_id, id desc) where monitor_id is not null;
create index deliveries_by_course on deliveries (course_id, id desc) where course_id is not null;
create index deliveries_by_student on deliveries (student_id, id desc) where student_id is not null;
create index deliveries_by_job on deliveries (job_id, id desc) where job_id is not null;
create index deliveries_by_recipient on deliveries (recipient, id desc);
