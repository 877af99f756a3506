#!/usr/bin/env bash
# Debian's chromium, which the dashboard's browser test drives headless (Playwright with its executable).
# Usage: deploy/local/chromium.sh install
set -euo pipefail

SERVICE=chromium
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/common.sh
source "$HERE/common.sh"

install() {
  command -v chromium >/dev/null && return 0
  local sudo=""
  ((EUID == 0)) || sudo=sudo
  log "installing chromium with apt-get"
  $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
    || die "apt-get install chromium failed"
}

case "${1:-}" in
  install) install ;;
  *) die "usage: $0 install" ;;
esac
