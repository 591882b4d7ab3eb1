#!/usr/bin/env bash
# Installs what the browser tests (tests/browser/, marker `browser`) need on a fresh Debian
# machine: the distribution's Chromium and a font for the page's text. Only apt is used:
# `playwright install` downloads its own browser build from the internet, which CI cannot reach,
# so the tests drive /usr/bin/chromium through the Python playwright package instead.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

packages=(chromium fonts-dejavu-core)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ] && [ -x /usr/bin/chromium ]; then
    echo "install-browser: already installed: ${packages[*]}"
    exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

echo "install-browser: installing ${missing[*]:-chromium}"
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${packages[@]}"

# The Debian launcher warns about its own memory probe on stderr; only the version matters here.
/usr/bin/chromium --version 2>/dev/null
