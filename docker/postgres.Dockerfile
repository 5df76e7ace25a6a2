# PostgreSQL 16 with pg_cron and plpgsql_check from Debian's packages. pgmq is installed by
# `conveyor migrate` (the SQL-only install shipped in the pgmq Python package) when the
# server has no pgmq extension.
FROM postgres:16-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-16-cron postgresql-16-plpgsql-check \
 && rm -rf /var/lib/apt/lists/*
CMD ["postgres", "-c", "shared_preload_libraries=pg_cron", "-c", "cron.database_name=conveyor", \
     "-c", "cron.use_background_workers=on", "-c", "max_worker_processes=32"]
