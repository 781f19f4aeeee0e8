#!/usr/bin/env bash
# Install the Debian packages audiotune needs, if they are missing:
#   ffmpeg               - datasets' audio decoding (torchcodec) and our fallback decoder
#   default-jre-headless - the PTB tokenizer and METEOR of the caption metrics (pycocoevalcap)
# With --test also:
#   chromium             - renders report.html headless in the report test; drives the web UI's tests
set -euo pipefail
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "audiotune needs: ${need[*]}. Install them (e.g. sudo apt-get install ${need[*]}) and retry." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
