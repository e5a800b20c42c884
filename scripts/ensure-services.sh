#!/usr/bin/env bash
# Start the local services the real-service tests use, where they are installed but stopped.
# Never fails the build by itself: tests that need a missing service skip locally and fail in CI
# (FEDHIVE_REQUIRE_SERVICES=1), with a message saying which service is missing.
set -u
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# In CI every real-service test is required: install what a fresh machine lacks (Debian).
if [ "${FEDHIVE_REQUIRE_SERVICES:-}" = "1" ] && command -v apt-get >/dev/null; then
  missing=""
  command -v rabbitmq-server >/dev/null || missing="$missing rabbitmq-server"
  command -v pg_ctlcluster >/dev/null || missing="$missing postgresql"
  command -v chromium >/dev/null || missing="$missing chromium"
  command -v npm >/dev/null || missing="$missing npm"
  if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null \
      || echo "warning: could not install$missing" >&2
  fi
fi
command -v chromium >/dev/null || echo "note: chromium is not installed (apt-get install chromium); browser tests will skip locally" >&2
wait_port() { for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done; return 1; }

if ! port_open 5672 && command -v rabbitmqctl >/dev/null; then
  # The node may run with its app stopped (an interrupted broker-restart test): start the app.
  timeout 30 rabbitmqctl start_app >/dev/null 2>&1 && wait_port 5672
fi
if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null; then
    echo "starting RabbitMQ"; rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 || echo "warning: RabbitMQ did not open port 5672 within 30 s" >&2
  else
    echo "note: RabbitMQ is not installed (apt-get install rabbitmq-server); AMQP tests will skip locally" >&2
  fi
fi
if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    ver=$(ls /etc/postgresql 2>/dev/null | head -n1)
    [ -n "$ver" ] && { echo "starting PostgreSQL $ver"; pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true; }
    wait_port 5432 || echo "warning: PostgreSQL did not open port 5432" >&2
  else
    echo "note: PostgreSQL is not installed (apt-get install postgresql); PostgreSQL tests will skip locally" >&2
  fi
fi
exit 0
