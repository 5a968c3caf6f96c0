# Sourced by .ci/run: a throwaway PostgreSQL server on 127.0.0.1 for the tests of the promotion lock that a
# team MLflow server's Postgres gives (tests/test_registry.py reads SMOOTHKD_TEST_POSTGRES_URI).
# `postgres_up` installs the distribution's package when it is missing (CI runs as root on Debian),
# initialises a cluster in a temporary directory, starts it on a free port and exports the URI;
# `postgres_down` stops it and removes the directory. Run alone: `source .ci/postgres.sh && postgres_up`.

postgres_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# The server refuses to run as root: as root, its commands run as the package's `postgres` user.
as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

postgres_up() {
    if [ -z "$(postgres_bin)" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "postgres: not installed and not root; install the postgresql package" >&2
            return 1
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    local bin
    bin="$(postgres_bin)"
    PG_DIR="$(mktemp -d /tmp/smoothkd-postgres.XXXXXX)"
    [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
    PG_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_postgres "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust >/dev/null
    as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR" start >/dev/null
    # CREATEDB: a test makes a fresh database for its own MLflow store and drops it after.
    as_postgres "$bin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "CREATE USER smoothkd PASSWORD 'smoothkd' CREATEDB" -c "CREATE DATABASE smoothkd OWNER smoothkd"
    export SMOOTHKD_TEST_POSTGRES_URI="postgresql://smoothkd:smoothkd@127.0.0.1:$PG_PORT/smoothkd"
    echo "postgres: $SMOOTHKD_TEST_POSTGRES_URI (log $PG_DIR/server.log)"
}

postgres_down() {
    [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ] || return 0
    as_postgres "$(postgres_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null || true
    rm -rf "$PG_DIR"
}
