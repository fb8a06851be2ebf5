-- A student's requests, newest first (ListRequests): one index range per page, whatever the status.
create index requests_by_student_newest on requests (student_id, created_at desc, id desc);
