-- The pg_cron jobs Conveyor installs (only in the database where pg_cron's scheduler runs;
-- elsewhere the runner drives the same work). cron.schedule with an existing job name
-- updates that job, so re-applying this file is harmless.
--
--   conveyor-tick        every minute: dispatch events, fire schedules, expire timeouts,
--                        resume due delays — the safety net when no runner is alive
--                        (runners tick far more often).
--   conveyor-stalled     every minute: re-send queued actions that lost their message.
--   conveyor-retention   every five minutes: prune history past each tenant's retention.
do $$
begin
  if exists (select from pg_catalog.pg_extension where extname = 'pg_cron') then
    perform cron.schedule('conveyor-tick', '* * * * *', 'select conveyor.tick()');
    perform cron.schedule('conveyor-stalled', '* * * * *', 'select conveyor.recover_stalled_actions()');
    perform cron.schedule('conveyor-retention', '*/5 * * * *', 'select conveyor.prune_history()');
  end if;
end
$$;
