#!/usr/bin/env bash
# Real services on loopback for flowgate's tests: PostgreSQL, s3s-fs (S3), an
# SMTP server (aiosmtpd, storing what it receives in a Maildir), moto (SQS,
# DynamoDB, S3 event notifications), nginx as an HTTPS receiver that demands
# client certificates (WebDAV PUT stores the files), etcd and Consul (KV stores to
# watch; Consul with ACLs on, its management token in FLOWGATE_TEST_CONSUL_TOKEN),
# and Apache Kafka (one KRaft node, broker and controller in one JVM; its jars
# from Maven Central; `scripts/services.sh kafka-restart` restarts it in place),
# and bqemulator (BigQuery's REST API on DuckDB, from PyPI, in its own venv).
#
#   scripts/services.sh start     install what is missing (as root), start, print URLs
#   scripts/services.sh env       print `export VAR=…` lines for the running services
#   scripts/services.sh stop      stop what `start` started
#
# State lives in $FLOWGATE_SERVICES_DIR (default /tmp/flowgate-services); tools are
# installed under $HOME/.cache/flowgate/tools so repeated runs reuse them.
set -euo pipefail

W="${FLOWGATE_SERVICES_DIR:-/tmp/flowgate-services}"
TOOLS="${FLOWGATE_TOOLS_DIR:-$HOME/.cache/flowgate/tools}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
VENV="${FLOWGATE_VENV:-$HOME/.cache/flowgate/venv}"
S3S_VERSION=0.14.1
# Consul under the MPL (1.17 and later are BSL; 1.15 and 1.16 need submodules under
# the BSL too), built from the Go module proxy.
CONSUL_VERSION=v1.14.11
KAFKA_VERSION=4.4.0
# helm renders and lints the chart in the tests; built from the Go module proxy.
HELM_VERSION=v4.3.2
ENV_FILE="$W/services.env"

say() { echo "services: $*" >&2; }
die() { echo "services: error: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

is_root() { [ "$(id -u)" = 0 ]; }

# apt_install WHAT PACKAGE...: install Debian packages when root, else say how.
apt_install() {
  local what=$1; shift
  if is_root; then
    say "installing $what (apt-get install $*)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    die "$what is missing: run 'sudo apt-get install -y --no-install-recommends $*'"
  fi
}

ensure_postgres() {
  [ -x "$PG_BIN/initdb" ] && return 0
  apt_install "PostgreSQL 15 (or set PG_BIN to its bin directory)" postgresql
}

ensure_s3s() {
  [ -x "$TOOLS/bin/s3s-fs" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to install s3s-fs"
  say "installing s3s-fs $S3S_VERSION into $TOOLS (about 2 minutes, once)"
  cargo install "s3s-fs@$S3S_VERSION" --locked --features binary --root "$TOOLS" >&2
}

ensure_etcd() {
  command -v etcd >/dev/null && command -v etcdctl >/dev/null && return 0
  apt_install etcd etcd-server etcd-client
}

ensure_consul() {
  [ -x "$TOOLS/bin/consul" ] && return 0
  command -v go >/dev/null || die "Consul is built with Go, which is missing: install Go >= 1.22 (https://go.dev/dl/) and rerun"
  say "building Consul $CONSUL_VERSION into $TOOLS (go build, about 4 minutes, once)"
  local b="$HOME/.cache/flowgate/consul-build"
  mkdir -p "$b" "$TOOLS/bin"
  # Consul's go.mod has replace directives, so `go install` refuses it: build it
  # from a throwaway module that requires it.
  ( cd "$b" && export GOPATH="$HOME/.cache/flowgate/go" GOCACHE="$HOME/.cache/flowgate/go-build" GOFLAGS=-mod=mod &&
    { [ -f go.mod ] || go mod init tmp >/dev/null 2>&1; } &&
    go get "github.com/hashicorp/consul@$CONSUL_VERSION" >&2 &&
    go build -o "$TOOLS/bin/consul" github.com/hashicorp/consul >&2 ) || die "building Consul failed (see above)"
}

ensure_helm() {
  [ -x "$TOOLS/bin/helm" ] && return 0
  command -v go >/dev/null || die "helm is built with Go, which is missing: install Go >= 1.24 (https://go.dev/dl/) and rerun"
  say "building helm $HELM_VERSION into $TOOLS (go install, once)"
  mkdir -p "$TOOLS/bin"
  ( export GOPATH="$HOME/.cache/flowgate/go" GOCACHE="$HOME/.cache/flowgate/go-build" GOBIN="$TOOLS/bin" &&
    go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2 ) || die "building helm failed (see above)"
}

ensure_kafka() {
  ls "$TOOLS/kafka/lib"/kafka_2.13-*.jar >/dev/null 2>&1 && return 0
  command -v java >/dev/null || apt_install "Java 17 (for the Apache Kafka broker)" openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install "Maven (it fetches the Apache Kafka jars)" maven
  say "fetching Apache Kafka $KAFKA_VERSION's jars from Maven Central into $TOOLS/kafka (once)"
  mkdir -p "$TOOLS/kafka"
  cat >"$TOOLS/kafka/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>flowgate-test-kafka</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>2.0.17</version></dependency>
  </dependencies></project>
POM
  ( cd "$TOOLS/kafka" && mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=lib >&2 ) || die "fetching Apache Kafka's jars failed (see above)"
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      if is_root; then
        say "installing python3-venv"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
      else
        die "python3 -m venv failed: run 'sudo apt-get install -y python3-venv'"
      fi
    fi
  fi
  "$VENV/bin/python" -c 'import aiosmtpd, moto, boto3, yaml' 2>/dev/null && return 0
  say "installing aiosmtpd, moto[server], boto3 and PyYAML into $VENV"
  "$VENV/bin/pip" install -q aiosmtpd "moto[server]>=5,<6" boto3 pyyaml >&2
}

# bqemulator 1.4.0 wants DuckDB's `spatial` extension from the network at start
# (unreachable offline: GEOGRAPHY is lost, nothing flowgate uses) and numpy,
# which it does not declare. Its own venv: it pins duckdb and pyarrow.
BQ_VENV="$TOOLS/bqemu-venv"
ensure_bqemu() {
  if ! "$BQ_VENV/bin/python" -c 'import bqemulator, numpy' 2>/dev/null; then
    say "installing bqemulator 1.4.0 (the BigQuery emulator) into $BQ_VENV"
    python3 -m venv "$BQ_VENV" || die "python3 -m venv failed: run 'sudo apt-get install -y python3-venv'"
    "$BQ_VENV/bin/pip" install -q 'bqemulator==1.4.0' numpy >&2 || die "installing bqemulator failed (see above)"
  fi
  cat >"$BQ_VENV/bqemu_offline.py" <<'PY'
import sys
import bqemulator.storage.engine as eng
def _load_spatial(self):
    try:
        self._connection.execute("SET autoinstall_known_extensions=false")
        self._connection.execute("LOAD spatial")
    except Exception as exc:
        print(f"bqemu_offline: spatial unavailable, GEOGRAPHY disabled ({type(exc).__name__})", file=sys.stderr)
eng.DuckDBEngine._load_spatial = _load_spatial
from bqemulator.cli import main
sys.exit(main())
PY
}

ensure_nginx() {
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] && return 0
  apt_install nginx nginx
  # Debian starts it on :80; the tests start their own.
  service nginx stop >/dev/null 2>&1 || true
}

# A test CA, the receiver's certificate for 127.0.0.1, a client certificate it
# trusts, and a "rogue" client certificate from another CA that it must refuse.
make_tls() {
  local d="$W/tls"
  rm -rf "$d"; mkdir -p "$d"
  local o="openssl"
  $o req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=flowgate test CA"     -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  $o req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=rogue CA"     -keyout "$d/rogue-ca.key" -out "$d/rogue-ca.pem" 2>/dev/null
  $o req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
  $o x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
    -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$d/client.ext"
  for who in client rogue; do
    local ca=ca; [ "$who" = rogue ] && ca=rogue-ca
    $o req -newkey rsa:2048 -nodes -subj "/CN=flowgate $who" -keyout "$d/$who.key" -out "$d/$who.csr" 2>/dev/null
    $o x509 -req -in "$d/$who.csr" -CA "$d/$ca.pem" -CAkey "$d/$ca.key" -CAcreateserial -days 30 \
      -extfile "$d/client.ext" -out "$d/$who.pem" 2>/dev/null
  done
}

# moto: SQS, DynamoDB and S3 buckets that send event notifications to SQS.
start_moto() {
  local port; port=$(free_port)
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$W/moto.log" 2>&1 &
  echo $! >"$W/moto.pid"
  wait_port "$port" moto_server
  cat >>"$ENV_FILE" <<ENV
export FLOWGATE_TEST_MOTO_ENDPOINT=http://127.0.0.1:$port
export FLOWGATE_TEST_PYTHON=$VENV/bin/python
export FLOWGATE_TEST_HELM=$TOOLS/bin/helm
ENV
  say "moto (SQS, DynamoDB, S3 with notifications) on http://127.0.0.1:$port"
}

start_nginx() {
  local port; port=$(free_port)
  local n="$W/nginx"
  rm -rf "$n"; mkdir -p "$n/www/inbound" "$n/logs" "$n/tmp"
  local user=""
  if is_root; then user="user root root;"; fi
  cat >"$n/nginx.conf" <<CONF
$user
worker_processes 1;
pid $n/nginx.pid;
error_log $n/logs/error.log info;
events { worker_connections 64; }
http {
  access_log $n/logs/access.log;
  client_body_temp_path $n/tmp/body;
  proxy_temp_path $n/tmp/proxy;
  fastcgi_temp_path $n/tmp/fastcgi;
  uwsgi_temp_path $n/tmp/uwsgi;
  scgi_temp_path $n/tmp/scgi;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $W/tls/server.pem;
    ssl_certificate_key $W/tls/server.key;
    ssl_client_certificate $W/tls/ca.pem;
    ssl_verify_client on;
    client_max_body_size 0;
    root $n/www;
    location /inbound/ {
      dav_methods PUT;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }
  }
}
CONF
  local bin; bin=$(command -v nginx || echo /usr/sbin/nginx)
  "$bin" -p "$n" -c "$n/nginx.conf" -e "$n/logs/error.log" || die "nginx did not start; see $n/logs/error.log"
  wait_port "$port" nginx
  cat >>"$ENV_FILE" <<ENV
export FLOWGATE_TEST_HTTPS_URL=https://127.0.0.1:$port/inbound/
export FLOWGATE_TEST_HTTPS_ROOT=$n/www/inbound
export FLOWGATE_TEST_TLS_DIR=$W/tls
ENV
  say "HTTPS receiver (nginx, client certificates required) on https://127.0.0.1:$port/inbound/"
}

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$what did not start listening on 127.0.0.1:$port; see its log under $W"
}

# The role flowgate_tls_only may connect over TLS only: tests prove with it that
# a connection really was encrypted.
tls_only_role() {
  local hba="$1/pg_hba.conf"
  { echo "hostnossl all flowgate_tls_only all reject"; cat "$hba"; } >"$hba.new" && mv "$hba.new" "$hba"
  if is_root; then chown postgres:postgres "$hba"; fi
}

start_postgres() {
  local port; port=$(free_port)
  mkdir -p "$W/pg"
  local data="$W/pg/data"
  rm -rf "$data"
  # TLS offered (not demanded) with the test CA's certificate for 127.0.0.1, so
  # sslmode=verify-full can be tested; PostgreSQL wants its key private to it.
  cp "$W/tls/server.pem" "$W/pg/server.pem"; cp "$W/tls/server.key" "$W/pg/server.key"
  chmod 600 "$W/pg/server.key"
  local opts="-p $port -k $W/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
  opts="$opts -c ssl=on -c ssl_cert_file=$W/pg/server.pem -c ssl_key_file=$W/pg/server.key"
  if is_root; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$W/pg" postgres
    chown -R postgres:postgres "$W/pg"
    su postgres -s /bin/sh -c "$PG_BIN/initdb -D $data -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8" >"$W/pg/initdb.log" 2>&1 \
      || die "initdb failed; see $W/pg/initdb.log"
    tls_only_role "$data"
    su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $data -l $W/pg/log -w -o '$opts' start" >/dev/null \
      || die "PostgreSQL did not start; see $W/pg/log"
  else
    "$PG_BIN/initdb" -D "$data" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >"$W/pg/initdb.log" 2>&1 \
      || die "initdb failed; see $W/pg/initdb.log"
    tls_only_role "$data"
    "$PG_BIN/pg_ctl" -D "$data" -l "$W/pg/log" -w -o "$opts" start >/dev/null \
      || die "PostgreSQL did not start; see $W/pg/log"
  fi
  head -1 "$data/postmaster.pid" >"$W/pg.pid"
  echo "export FLOWGATE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres" >>"$ENV_FILE"
  echo "export FLOWGATE_TEST_POSTGRES_SOCKET=$W/pg:$port" >>"$ENV_FILE"
  say "PostgreSQL on postgres://postgres@127.0.0.1:$port/postgres"
}

start_s3s() {
  local port; port=$(free_port)
  local root="$W/s3"
  rm -rf "$root"; mkdir -p "$root"
  nohup "$TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key flowgate-test --secret-key flowgate-test-secret "$root" \
    >"$W/s3s.log" 2>&1 &
  echo $! >"$W/s3s.pid"
  wait_port "$port" s3s-fs
  cat >>"$ENV_FILE" <<ENV
export FLOWGATE_TEST_S3_ENDPOINT=http://127.0.0.1:$port
export FLOWGATE_TEST_S3_ROOT=$root
export FLOWGATE_TEST_S3_ACCESS_KEY=flowgate-test
export FLOWGATE_TEST_S3_SECRET_KEY=flowgate-test-secret
ENV
  say "s3s-fs on http://127.0.0.1:$port (buckets are directories of $root)"
}

start_smtp() {
  local port; port=$(free_port)
  rm -rf "$W/mail"; mkdir -p "$W/mail/tmp" "$W/mail/new" "$W/mail/cur"
  nohup "$VENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$port" -c aiosmtpd.handlers.Mailbox "$W/mail" \
    >"$W/smtp.log" 2>&1 &
  echo $! >"$W/smtp.pid"
  wait_port "$port" aiosmtpd
  cat >>"$ENV_FILE" <<ENV
export FLOWGATE_TEST_SMTP_URL=smtp://127.0.0.1:$port
export FLOWGATE_TEST_SMTP_MAILDIR=$W/mail
ENV
  say "SMTP on smtp://127.0.0.1:$port (messages land in $W/mail/new)"
}

start_etcd() {
  local port peer; port=$(free_port); peer=$(free_port)
  rm -rf "$W/etcd"
  nohup etcd --name ci --data-dir "$W/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "ci=http://127.0.0.1:$peer" >"$W/etcd.log" 2>&1 &
  echo $! >"$W/etcd.pid"
  wait_port "$port" etcd
  cat >>"$ENV_FILE" <<ENV
export FLOWGATE_TEST_ETCD_URL=etcd://127.0.0.1:$port
export FLOWGATE_TEST_ETCD_ENDPOINT=127.0.0.1:$port
ENV
  say "etcd on etcd://127.0.0.1:$port"
}

start_consul() {
  local http https lan wan server; http=$(free_port); https=$(free_port); lan=$(free_port); wan=$(free_port); server=$(free_port)
  local token=flowgate-test-consul-management
  rm -rf "$W/consul"; mkdir -p "$W/consul"
  cat >"$W/consul/acl.hcl" <<HCL
acl {
  enabled = true
  default_policy = "deny"
  tokens { initial_management = "$token" }
}
# HTTPS beside HTTP, with the test CA's certificate for 127.0.0.1.
ports { https = $https }
tls {
  defaults {
    cert_file = "$W/tls/server.pem"
    key_file = "$W/tls/server.key"
    ca_file = "$W/tls/ca.pem"
    verify_incoming = false
  }
}
HCL
  nohup "$TOOLS/bin/consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$http" \
    -grpc-port -1 -grpc-tls-port -1 -dns-port -1 -serf-lan-port "$lan" -serf-wan-port "$wan" -server-port "$server" \
    -config-file "$W/consul/acl.hcl" >"$W/consul.log" 2>&1 &
  echo $! >"$W/consul.pid"
  wait_port "$http" consul
  # The KV answers once a leader is elected.
  for _ in $(seq 1 100); do
    python3 -c 'import sys, urllib.request as u
r = u.Request(sys.argv[1], headers={"X-Consul-Token": sys.argv[2]})
sys.exit(0 if ":" in u.urlopen(r, timeout=2).read().decode() else 1)' \
      "http://127.0.0.1:$http/v1/status/leader" "$token" 2>/dev/null && break
    sleep 0.1
  done
  cat >>"$ENV_FILE" <<ENV
export FLOWGATE_TEST_CONSUL_URL=consul://127.0.0.1:$http
export FLOWGATE_TEST_CONSUL_HTTPS_URL=consul+https://127.0.0.1:$https
export FLOWGATE_TEST_CONSUL_TOKEN=$token
export FLOWGATE_TEST_CONSUL_BIN=$TOOLS/bin/consul
ENV
  say "Consul on consul://127.0.0.1:$http and consul+https://127.0.0.1:$https (ACLs on; token in FLOWGATE_TEST_CONSUL_TOKEN)"
}

KAFKA_JAVA_OPTS="-Xms128m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true -Dslf4j.provider=org.slf4j.simple.SimpleServiceProvider -Dorg.slf4j.simpleLogger.defaultLogLevel=warn"

# The broker of $W/kafka (configured and formatted by start_kafka).
run_kafka() {
  local port; port=$(cut -d' ' -f1 "$W/kafka/ports")
  # shellcheck disable=SC2086
  nohup java $KAFKA_JAVA_OPTS -cp "$TOOLS/kafka/lib/*" kafka.Kafka "$W/kafka/server.properties" >>"$W/kafka.log" 2>&1 &
  echo $! >"$W/kafka.pid"
  for _ in $(seq 1 600); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$(cat "$W/kafka.pid")" 2>/dev/null || break
    sleep 0.1
  done
  tail -30 "$W/kafka.log" >&2
  die "Kafka did not start listening on 127.0.0.1:$port; see $W/kafka.log"
}

stop_kafka() {
  [ -f "$W/kafka.pid" ] || return 0
  local pid; pid=$(cat "$W/kafka.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$W/kafka.pid"
}

# A second listener asks what production clusters ask: TLS (the test CA's
# certificate for 127.0.0.1) and SCRAM-SHA-512 (user flowgate).
KAFKA_SCRAM_PASSWORD=flowgate-kafka-scram-pw
start_kafka() {
  local port cport sport; port=$(free_port); cport=$(free_port); sport=$(free_port)
  rm -rf "$W/kafka"; mkdir -p "$W/kafka"
  echo "$port $cport $sport" >"$W/kafka/ports"
  cat "$W/tls/server.key" "$W/tls/server.pem" >"$W/kafka/keystore.pem"
  cat >"$W/kafka/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://127.0.0.1:$sport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$W/kafka/keystore.pem
log.dirs=$W/kafka/data
num.partitions=1
num.network.threads=2
num.io.threads=2
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=8388608
PROPS
  local cluster
  # shellcheck disable=SC2086
  cluster=$(java $KAFKA_JAVA_OPTS -cp "$TOOLS/kafka/lib/*" kafka.tools.StorageTool random-uuid)
  # shellcheck disable=SC2086
  java $KAFKA_JAVA_OPTS -cp "$TOOLS/kafka/lib/*" kafka.tools.StorageTool format -t "$cluster" \
    -c "$W/kafka/server.properties" --add-scram "SCRAM-SHA-512=[name=flowgate,password=$KAFKA_SCRAM_PASSWORD]" \
    >>"$W/kafka.log" 2>&1 || die "formatting Kafka's storage failed; see $W/kafka.log"
  run_kafka
  cat >>"$ENV_FILE" <<ENV
export FLOWGATE_TEST_KAFKA_BOOTSTRAP=127.0.0.1:$port
export FLOWGATE_TEST_KAFKA_SASL_SSL=127.0.0.1:$sport
export FLOWGATE_TEST_KAFKA_SCRAM_PASSWORD=$KAFKA_SCRAM_PASSWORD
ENV
  say "Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (KRaft, one node; SASL_SSL with SCRAM-SHA-512 on $sport)"
}

start_bqemu() {
  local rest grpc; rest=$(free_port); grpc=$(free_port)
  BQEMU_ENABLE_FORMAT_EXTENSIONS=false nohup "$BQ_VENV/bin/python" "$BQ_VENV/bqemu_offline.py" start \
    --rest-host 127.0.0.1 --rest-port "$rest" --grpc-host 127.0.0.1 --grpc-port "$grpc" \
    --project test-project --log-level warning >"$W/bqemu.log" 2>&1 &
  echo $! >"$W/bqemu.pid"
  local ready="import urllib.request; urllib.request.urlopen('http://127.0.0.1:$rest/readyz', timeout=1)"
  for _ in $(seq 1 300); do
    "$BQ_VENV/bin/python" -c "$ready" 2>/dev/null && break
    kill -0 "$(cat "$W/bqemu.pid")" 2>/dev/null || die "bqemulator exited; see $W/bqemu.log"
    sleep 0.1
  done
  "$BQ_VENV/bin/python" -c "$ready" 2>/dev/null || die "bqemulator did not answer; see $W/bqemu.log"
  cat >>"$ENV_FILE" <<ENV
export FLOWGATE_TEST_BIGQUERY_ENDPOINT=http://127.0.0.1:$rest
export FLOWGATE_TEST_BIGQUERY_PROJECT=test-project
ENV
  say "bqemulator (BigQuery REST) on http://127.0.0.1:$rest, project test-project"
}

stop() {
  if [ -f "$W/nginx/nginx.pid" ]; then kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null || true; rm -f "$W/nginx/nginx.pid"; fi
  if [ -f "$W/moto.pid" ]; then kill "$(cat "$W/moto.pid")" 2>/dev/null || true; rm -f "$W/moto.pid"; fi
  if [ -f "$W/smtp.pid" ]; then kill "$(cat "$W/smtp.pid")" 2>/dev/null || true; rm -f "$W/smtp.pid"; fi
  if [ -f "$W/s3s.pid" ]; then kill "$(cat "$W/s3s.pid")" 2>/dev/null || true; rm -f "$W/s3s.pid"; fi
  if [ -f "$W/etcd.pid" ]; then kill "$(cat "$W/etcd.pid")" 2>/dev/null || true; rm -f "$W/etcd.pid"; fi
  if [ -f "$W/consul.pid" ]; then kill "$(cat "$W/consul.pid")" 2>/dev/null || true; rm -f "$W/consul.pid"; fi
  if [ -f "$W/bqemu.pid" ]; then
    p=$(cat "$W/bqemu.pid"); kill "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    rm -f "$W/bqemu.pid"
  fi
  stop_kafka
  if [ -f "$W/pg.pid" ]; then
    kill -INT "$(cat "$W/pg.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$(cat "$W/pg.pid")" 2>/dev/null || break; sleep 0.1; done
    rm -f "$W/pg.pid"
  fi
  # The tests' databases and buckets: gigabytes after a full run, and each start
  # begins empty anyway.
  rm -rf "$W/pg/data" "$W/s3" "$W/kafka"
  rm -f "$ENV_FILE"
}

case "${1:-}" in
  start)
    mkdir -p "$W"
    stop
    ensure_postgres
    ensure_s3s
    ensure_venv
    ensure_nginx
    ensure_etcd
    ensure_consul
    ensure_kafka
    ensure_helm
    ensure_bqemu
    : >"$ENV_FILE"
    make_tls
    start_postgres
    start_s3s
    start_smtp
    start_moto
    start_nginx
    start_etcd
    start_consul
    start_kafka
    start_bqemu
    cat "$ENV_FILE"
    ;;
  env)
    [ -f "$ENV_FILE" ] || die "no services are running; run: scripts/services.sh start"
    cat "$ENV_FILE"
    ;;
  stop) stop ;;
  kafka-restart)
    # A broker restart mid-test: the same data, the same port.
    [ -f "$W/kafka/ports" ] || die "Kafka is not running; run: scripts/services.sh start"
    stop_kafka
    run_kafka
    ;;
  *) echo "usage: scripts/services.sh start|env|stop|kafka-restart" >&2; exit 2 ;;
esac
