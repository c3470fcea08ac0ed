BEGIN TRANSACTION;
CREATE TABLE budget_spend (
    scope       TEXT NOT NULL,
    name        TEXT NOT NULL,
    period      TEXT NOT NULL,
    spent_nanos INTEGER NOT NULL,
    PRIMARY KEY (scope, name, period)
) WITHOUT ROWID;
CREATE TABLE ledger (
    request_id  TEXT PRIMARY KEY,
    at          REAL NOT NULL,
    day         TEXT NOT NULL,
    "key"       TEXT,
    team        TEXT,
    "user"      TEXT,
    route       TEXT,
    deployment  TEXT,
    tokens_in   INTEGER NOT NULL,
    tokens_out  INTEGER NOT NULL,
    cost_nanos  INTEGER NOT NULL,
    latency_ms  REAL NOT NULL,
    status      INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    tokens_cached INTEGER NOT NULL DEFAULT 0,
    estimated   INTEGER NOT NULL DEFAULT 0,
    batch       TEXT
);
INSERT INTO "ledger" VALUES('old-1',1830243600.0,'2027-12-31','ci-bot','engineering',NULL,'speaker','gpt-4o-audio',120,40,1200000,80.0,200,'ff',0,0,NULL);
INSERT INTO "ledger" VALUES('old-2',1830276000.0,'2027-12-31','ci-bot','engineering',NULL,'speaker','gpt-4o-audio',120,40,1000000,80.0,200,'ff',20,0,NULL);
INSERT INTO "ledger" VALUES('old-3',1830322800.0,'2028-01-01','ops',NULL,NULL,'speaker','gpt-4o-audio',120,40,0,80.0,500,'ff',0,0,NULL);
INSERT INTO "ledger" VALUES('old-3:gpt-4o-audio:1',1830322800.0,'2028-01-01','ops',NULL,NULL,'speaker','gpt-4o-audio',120,0,300000,80.0,499,'ff',0,1,NULL);
CREATE TABLE ledger_daily (
        day           TEXT NOT NULL,
        "key"         TEXT,
        team          TEXT,
        route         TEXT,
        deployment    TEXT,
        records INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, tokens_cached INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, estimated_nanos INTEGER NOT NULL
    );
INSERT INTO "ledger_daily" VALUES('2027-12-31','ci-bot','engineering','speaker','gpt-4o-audio',2,2,0,240,80,20,2200000,0);
INSERT INTO "ledger_daily" VALUES('2028-01-01','ops',NULL,'speaker','gpt-4o-audio',2,1,1,240,40,0,300000,300000);
CREATE INDEX ledger_at ON ledger (at);
CREATE INDEX ledger_team_at ON ledger (team, at);
CREATE INDEX ledger_key_at ON ledger ("key", at);
CREATE UNIQUE INDEX ledger_daily_group ON ledger_daily (day, ifnull("key", x''), ifnull(team, x''), ifnull(route, x''), ifnull(deployment, x''));
CREATE INDEX ledger_daily_team ON ledger_daily (team, day);
CREATE INDEX ledger_daily_key ON ledger_daily ("key", day);
CREATE TRIGGER ledger_daily_add AFTER INSERT ON ledger BEGIN
        INSERT INTO ledger_daily VALUES (NEW.day, NEW."key", NEW.team, NEW.route,
            NEW.deployment, 1, NOT NEW.estimated, NEW.status >= 400 AND NOT NEW.estimated, NEW.tokens_in, NEW.tokens_out, NEW.tokens_cached, NEW.cost_nanos, CASE WHEN NEW.estimated THEN NEW.cost_nanos ELSE 0 END)
        ON CONFLICT (day, ifnull("key", x''), ifnull(team, x''), ifnull(route, x''), ifnull(deployment, x'')) DO UPDATE SET
            records = records + excluded.records, requests = requests + excluded.requests, errors = errors + excluded.errors, tokens_in = tokens_in + excluded.tokens_in, tokens_out = tokens_out + excluded.tokens_out, tokens_cached = tokens_cached + excluded.tokens_cached, cost_nanos = cost_nanos + excluded.cost_nanos, estimated_nanos = estimated_nanos + excluded.estimated_nanos;
    END;
CREATE TRIGGER ledger_daily_remove AFTER DELETE ON ledger BEGIN
        UPDATE ledger_daily SET records = records - (1), requests = requests - (NOT OLD.estimated), errors = errors - (OLD.status >= 400 AND NOT OLD.estimated), tokens_in = tokens_in - (OLD.tokens_in), tokens_out = tokens_out - (OLD.tokens_out), tokens_cached = tokens_cached - (OLD.tokens_cached), cost_nanos = cost_nanos - (OLD.cost_nanos), estimated_nanos = estimated_nanos - (CASE WHEN OLD.estimated THEN OLD.cost_nanos ELSE 0 END)
        WHERE day = OLD.day AND ifnull("key", x'') = ifnull(OLD."key", x'') AND ifnull(team, x'') = ifnull(OLD.team, x'') AND ifnull(route, x'') = ifnull(OLD.route, x'') AND ifnull(deployment, x'') = ifnull(OLD.deployment, x'');
    END;
COMMIT;
