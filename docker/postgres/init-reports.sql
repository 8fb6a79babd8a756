-- The report store's roles for the compose demonstration (docker/README.md), run once by the
-- postgres image's entrypoint on an empty data directory (/docker-entrypoint-initdb.d/), as the
-- superuser, in the database POSTGRES_DB names. tests/monitoring/test_reports_dashboard.py runs
-- this file on a real PostgreSQL and the dashboard's queries as grafana_reader.
--
-- reports_writer: the milter ([reports] store in mailsec-milter.toml). It owns the database,
--   so it may create the store's tables (the store applies its schema itself at first use).
-- grafana_reader: Grafana's "mailsec-reports" data source (grafana/reports-datasource.yml).
--   It may read the tables reports_writer creates, and nothing else.
-- The passwords are the demonstration's: the database is reachable on the compose network
-- only. Change them here, in mailsec-milter.toml and in grafana/reports-datasource.yml.

CREATE ROLE reports_writer LOGIN PASSWORD 'demo-reports-writer';
CREATE ROLE grafana_reader LOGIN PASSWORD 'demo-grafana-reader';

DO $$
BEGIN
  EXECUTE format('ALTER DATABASE %I OWNER TO reports_writer', current_database());
  EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO reports_writer, grafana_reader',
                 current_database());
END
$$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO reports_writer;
GRANT USAGE ON SCHEMA public TO grafana_reader;
-- The tables do not exist yet: grant SELECT on whatever reports_writer creates (report_rows,
-- report_claims, schema_version). With an existing store: GRANT SELECT ON report_rows TO ...
ALTER DEFAULT PRIVILEGES FOR ROLE reports_writer IN SCHEMA public
  GRANT SELECT ON TABLES TO grafana_reader;
