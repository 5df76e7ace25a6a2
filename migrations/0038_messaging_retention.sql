-- Retention of messaging history (sql/retention_messaging.sql): the time columns
-- conveyor.prune_messaging_history deletes by, so each call reads only what is old.
create index notifications_created_idx on conveyor.notifications (created_at);
create index notification_deliveries_finished_idx on conveyor.notification_deliveries (finished_at)
where finished_at is not null;
create index notification_digests_done_idx on conveyor.notification_digests (created_at) where status <> 'open';
create index email_messages_sent_idx on conveyor.email_messages (sent_at);
create index campaign_enrollments_finished_idx on conveyor.campaign_enrollments (finished_at)
where finished_at is not null;
create index campaign_send_slots_minute_idx on conveyor.campaign_send_slots (minute);
