#!/usr/bin/env bash
# Debian packages the services, the apps and the tests run: installed with apt-get when one is missing.
#   mosquitto   the MQTT broker of the local mesh (sensors publish to it; the bridge streams into IoTService)
#   espeak-ng   AudioService.Synthesize's default voice, and the speech the audio tests listen to
#   sox         audio conversions in the audio tests
#   chromium    the browser the page tests drive (Playwright cannot download one here)
#   postgresql  the server the stores' PostgreSQL tests start (SQLite is the default everywhere else)
#   ffmpeg      ffprobe, with which the media tests read back the streams of the studio's videos
# Run as root, or as a user who may sudo. Does nothing when all are present.
set -euo pipefail
declare -A package_of=([mosquitto]=mosquitto [espeak-ng]=espeak-ng [sox]=sox [chromium]=chromium
                       [initdb]=postgresql [ffprobe]=ffmpeg)
missing=()
for command in "${!package_of[@]}"; do
  PATH="$PATH:/usr/sbin:$(printf '%s:' /usr/lib/postgresql/*/bin)" command -v "$command" >/dev/null \
    || missing+=("${package_of[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
