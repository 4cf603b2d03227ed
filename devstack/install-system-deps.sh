#!/usr/bin/env bash
# Installs what the local stack needs from Debian's packages when it is missing:
# a Java 17+ runtime and Maven (Kafka from Maven Central jars), the PostgreSQL 15 server,
# Chromium (the console's browser test drives it headless through Playwright) and promtool
# (Debian's prometheus package) for the alert rules' test.
# Does nothing when everything is present; needs root (or sudo) only when it has to install.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
   && ! { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; }; then
  missing+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# promtool (in Debian's prometheus package) checks deploy/prometheus/alerts.yml in the tests.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing system packages: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
  exit 1
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
