#!/usr/bin/env bash
# Fetches the dashboard's front-end libraries from the npm registry (pinned by package-lock.json)
# and copies their minified builds into src/fedhive/web/static/vendor/, which fedhive serves
# itself: browsers never reach a CDN at run time. Idempotent; safe to run on every `make`.
set -euo pipefail
web="$(cd "$(dirname "$0")/../src/fedhive/web" && pwd)"
vendor="$web/static/vendor"
cd "$web"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
mkdir -p "$vendor"
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css "$vendor/"
cp node_modules/uplot/LICENSE "$vendor/uPlot.LICENSE"
echo "web: vendor libraries in $vendor"
