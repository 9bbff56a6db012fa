#!/usr/bin/env bash
# The dashboard's page weight: each page and the assets it loads, fetched from a running `berth serve` as a
# signed-in browser would, in bytes as sent (the daemon does not compress) and gzipped (`gzip -9`, what a
# compressing proxy in front would send). "first visit" adds app.js and app.css, which later pages revalidate
# by ETag (304, no body). A deploy page's log arrives afterwards over SSE and is not counted.
#
# Usage: BERTH_TOKEN=TOKEN bash bench/dashboard/weight.sh [BASE_URL] [DEPLOY_ID]
#   BASE_URL defaults to http://127.0.0.1:7420; DEPLOY_ID to the newest deploy. A read token is enough.
set -euo pipefail
base=${1:-http://127.0.0.1:7420}
token=${BERTH_TOKEN:?set BERTH_TOKEN to a token of the daemon (read scope is enough)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Sign in as the form does; the cookie jar then carries the session.
status=$(curl -sS -o /dev/null -w '%{http_code}' -c "$work/jar" --data-urlencode "token=$token" "$base/ui/sign-in")
[[ $status == 303 ]] || { echo "signing in answered $status (is the token right?)" >&2; exit 1; }
api() { curl -sS -H "Authorization: Bearer $token" "$base$1"; }
deploy=${2:-$(api '/deploys?limit=1' | grep -o '"id":[0-9]*' | head -1 | cut -d: -f2)}
service=$(api /services | grep -o '"name":"[^"]*"' | head -1 | cut -d'"' -f4)

fetch() { # path -> "raw gzipped"
    curl -sS -b "$work/jar" -o "$work/body" "$base$1"
    echo "$(wc -c <"$work/body") $(gzip -9c "$work/body" | wc -c)"
}
read -r js_raw js_gz < <(fetch /ui/assets/app.js)
read -r css_raw css_gz < <(fetch /ui/assets/app.css)
printf '%-26s %9s %9s   %s\n' page raw gzip "first visit (+ app.js + app.css): raw / gzip"
pages=(/ui/sign-in /ui/)
[[ -n $service ]] && pages+=("/ui/services/$service")
pages+=(/ui/deploys)
[[ -n $deploy ]] && pages+=("/ui/deploys/$deploy")
pages+=(/ui/audit)
for path in "${pages[@]}"; do
    read -r raw gz < <(fetch "$path")
    printf '%-26s %9d %9d   %d / %d\n' "$path" "$raw" "$gz" $((raw + js_raw + css_raw)) $((gz + js_gz + css_gz))
done
printf '%-26s %9d %9d\n' /ui/assets/app.js "$js_raw" "$js_gz"
printf '%-26s %9d %9d\n' /ui/assets/app.css "$css_raw" "$css_gz"
