//! The tables, created on first use. README.md and ARCHITECTURE.md show
//! the same SQL for a database administrator to run by hand.

/// Returns the statements that create the schema `s` and its tables;
/// each is idempotent. `s` is a checked plain identifier.
pub fn create(s: &str) -> String {
    format!(
        r#"
CREATE SCHEMA IF NOT EXISTS {s};
-- One row per state: the same JSON document as the state file.
CREATE TABLE IF NOT EXISTS {s}.states (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    lineage     text,
    serial      bigint,
    document    text,
    -- Moved on by every run that takes the lock, checked by every journal write.
    fence       bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz
);
-- Every replaced version of a state (the file backend's .backup).
CREATE TABLE IF NOT EXISTS {s}.history (
    id          bigserial PRIMARY KEY,
    state_id    bigint NOT NULL REFERENCES {s}.states (id),
    lineage     text NOT NULL,
    serial      bigint NOT NULL,
    document    text NOT NULL,
    replaced_at timestamptz NOT NULL DEFAULT now(),
    replaced_by bigint
);
-- Who held (or holds) the lock of a state.
CREATE TABLE IF NOT EXISTS {s}.runs (
    id          bigserial PRIMARY KEY,
    state_id    bigint NOT NULL REFERENCES {s}.states (id),
    fence       bigint NOT NULL,
    backend_pid integer NOT NULL,
    user_name   text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    command     text NOT NULL,
    started     bigint NOT NULL,
    ci_job_url  text,
    ended       timestamptz
);
-- The journal of the runs that have not been folded into the state yet.
CREATE TABLE IF NOT EXISTS {s}.journal (
    seq         bigserial PRIMARY KEY,
    state_id    bigint NOT NULL REFERENCES {s}.states (id),
    run_id      bigint NOT NULL REFERENCES {s}.runs (id),
    address     text,
    open        boolean NOT NULL DEFAULT false,
    record      text NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_state ON {s}.journal (state_id, seq);
-- Never two creates under way for one address, whatever a client does.
CREATE UNIQUE INDEX IF NOT EXISTS journal_one_open_intent
    ON {s}.journal (state_id, address) WHERE open;
"#
    )
}

/// The grants a role needs once the tables exist.
pub fn grants(s: &str, role: &str) -> String {
    format!(
        r#"GRANT USAGE ON SCHEMA {s} TO {role};
GRANT SELECT, INSERT, UPDATE ON {s}.states, {s}.runs TO {role};
GRANT SELECT, INSERT ON {s}.history TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.journal TO {role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {role};
"#
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_statement_is_idempotent() {
        for statement in super::create("tk").split(';') {
            let statement = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join(" ");
            let statement = statement.trim();
            if statement.is_empty() {
                continue;
            }
            assert!(statement.contains("IF NOT EXISTS"), "{statement}");
        }
        assert!(super::grants("tk", "ci").contains("tk.journal"));
    }
}
