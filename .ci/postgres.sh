# Sourced by .ci/run: a private PostgreSQL cluster on 127.0.0.1 for the tests that share one
# Optuna study between processes. Installs Debian's postgresql if absent (as root), runs the
# server as an unprivileged user (the server refuses root), picks a free port, exports
# GRANALIGN_TEST_POSTGRES_URL and stops the server (by its PID) and removes the cluster on
# exit, whatever happened.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$pg_bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "ci: installing PostgreSQL (Debian package postgresql)"
  apt-get install -y -q postgresql >/dev/null || apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
if [ -z "$pg_bin" ]; then
  echo "ci: no PostgreSQL server binaries and no way to install them: the PostgreSQL tests will fail" >&2
else
  pg_dir=$(mktemp -d /tmp/granalign-pg.XXXXXX)
  pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  [ "$(id -u)" = 0 ] && chown postgres "$pg_dir"
  as_pg "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U granalign >"$pg_dir/initdb.log" 2>&1
  as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  pg_pid=$(head -n 1 "$pg_dir/data/postmaster.pid")
  stop_postgres() {
    kill -INT "$pg_pid" 2>/dev/null || true  # fast shutdown of this server only, by its PID
    for _ in $(seq 50); do kill -0 "$pg_pid" 2>/dev/null || break; sleep 0.2; done
    rm -rf "$pg_dir"
  }
  trap stop_postgres EXIT
  "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U granalign granalign_test
  export GRANALIGN_TEST_POSTGRES_URL="postgresql+psycopg2://granalign@127.0.0.1:$pg_port/granalign_test"
  echo "ci: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port (pid $pg_pid)"
fi
export GRANALIGN_REQUIRE_POSTGRES=1  # in CI the PostgreSQL tests run, never skip
