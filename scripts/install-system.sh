#!/usr/bin/env bash
# What a fresh Debian 12 machine needs for the demo and the tests; run as root.
# Installs only what is missing, so a second run costs seconds.
set -euo pipefail

APT_PACKAGES=(
  python3 python3-venv python3-dev build-essential git curl procps sudo
  slurm-wlm munge        # the local Slurm cluster (slurmctld, slurmd, munged)
  chromium               # end-to-end browser tests (Playwright drives Debian's chromium)
  postgresql             # the hub's production database option, tested beside SQLite
  nginx-light            # a real web server for the HTTP catalog and staging tests
  rclone                 # the peer of the staging benchmark over HTTP
  slurmdbd mariadb-server  # Slurm accounting: sacct, sacctmgr accounts and QoS
  # The session's desktop for napari: a VNC server, a window manager, and the X/GL
  # libraries Qt's xcb plugin loads (rendered in software by Mesa on CPU nodes).
  tigervnc-standalone-server tigervnc-tools openbox dbus-x11 xterm fonts-dejavu-core
  libgl1 libegl1 libgl1-mesa-dri libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
  libxcb-xinerama0 libxcb-xkb1 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian starts munge and Slurm as services on install; the local stack runs its
# own on other ports and sockets, so the packaged ones are not needed.
for svc in slurmctld slurmd slurmdbd munge postgresql nginx mariadb; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

if ! command -v configurable-http-proxy >/dev/null 2>&1; then
  echo "installing configurable-http-proxy from npm"
  npm install -g --no-fund --no-audit configurable-http-proxy@4
fi
