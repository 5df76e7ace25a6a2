-- The pg_cron jobs Conveyor installs (only in the database where pg_cron's scheduler runs;
-- elsewhere the runner drives the same work). cron.schedule with an existing job name
-- updates that job, so re-applying this file is harmless.
--
--   conveyor-tick   every minute: dispatch pending events, resume due delays — the safety
--                   net for when no runner is alive (runners tick far more often).
do $$
begin
  if exists (select from pg_catalog.pg_extension where extname = 'pg_cron') then
    perform cron.schedule('conveyor-tick', '* * * * *', 'select conveyor.tick()');
  end if;
end
$$;
