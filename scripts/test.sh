#!/usr/bin/env bash
# Every test: provisions the real services, checks formatting and lints, runs the
# whole suite. The one command a newcomer needs (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# One build for both README commands: `cargo run -- demo` and this script use the
# same profile (dev) and the same target directory (./target, or CARGO_TARGET_DIR).
# A clone without ./target gets a link to a shared cache outside it, so CI runs on
# fresh clones, and later clones, reuse the compiled dependencies.
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ ! -e target ] && [ ! -L target ]; then
  mkdir -p "$HOME/.cache/flowgate/target"
  ln -s "$HOME/.cache/flowgate/target" target
fi
export FLOWGATE_REQUIRE_SERVICES="${FLOWGATE_REQUIRE_SERVICES:-1}"

command -v cargo >/dev/null || { echo "test.sh: cargo is missing; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then rustup component add "$comp"; else
      echo "test.sh: cargo $comp is missing; install it with: rustup component add $comp" >&2; exit 1; fi
  fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest (once)" >&2
  cargo install cargo-nextest --locked >&2
fi

# librdkafka is built with the system's OpenSSL (TLS and SCRAM to Kafka).
if ! pkg-config --exists openssl 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing libssl-dev and pkg-config (once)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
  else
    echo "test.sh: OpenSSL's headers are missing; install them with: sudo apt-get install -y libssl-dev pkg-config" >&2; exit 1
  fi
fi

echo "== formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== services"
scripts/services.sh start >/dev/null
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh env)"

echo "== tests"
cargo nextest run --workspace --no-fail-fast
