#!/usr/bin/env bash
# Where a `berth … -v` run spends its time: timestamps every line berth prints (berth's stdout is line-buffered),
# then attributes to each remote command the time from its `$ …` line to the next `$ …` line of the same host (or
# to the end of its stage, for the last one): that is the command's round trip plus whatever berth does locally
# before the next one. Gaps before the first stage and between stages are shown as `(local)`.
#
#   timeline.sh [--host IP] -- BERTH ARGS…      e.g. timeline.sh -- target/release/berth deploy -P --version v3 -v
#   timeline.sh [--host IP] < saved.tsv         re-summarise a saved timeline (seconds<TAB>line)
#
# Prints each stage (start, ms since berth started; its wall time) and, for one host (default: the first host berth
# names), the ms spent on each of its commands; then the number of SSH commands (round trips) per host. The raw
# timeline goes to $TIMELINE_OUT when set.
set -euo pipefail
export LC_ALL=C

host=
if [[ ${1:-} == --host ]]; then
    host=$2
    shift 2
fi
status=0 # of the command: the summary is printed either way, then the script exits with it
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
if [[ ${1:-} == -- ]]; then
    shift
    # perl (core Time::HiRes): one process, no fork per line, so the stamps keep up with berth at 20 hosts.
    # shellcheck disable=SC2016 # perl code
    "$@" 2>&1 | perl -MTime::HiRes=time -ne 'BEGIN { $| = 1; $s = time } chomp; printf "%.4f\t%s\n", time - $s, $_;
        END { printf "%.4f\t(exit)\n", time - $s }' >"$raw" || status=$?
else
    cat >"$raw"
fi
[[ -z ${TIMELINE_OUT:-} ]] || cp "$raw" "$TIMELINE_OUT"

awk -F'\t' -v want="$host" '
    function close_cmd(t) { if (open_t != "") { printf "  %7.0f  %s\n", (t - open_t) * 1000, open_cmd; open_t = "" } }
    {
        t = $1; line = $2
        if (match(line, /^  \[[^]]+\] \$ /)) {
            h = substr(line, 4, index(line, "]") - 4)
            count[h]++
            if (want == "") want = h
            if (h != want) next
            if (open_t == "" && mark_t != "") printf "  %7.0f  (berth, locally: %s)\n", (t - mark_t) * 1000, mark
            mark_t = ""
            close_cmd(t)
            open_t = t; open_cmd = substr(line, RLENGTH + 1, 100)
        } else if (line ~ /^[^ ]/ && line !~ /^Finished all/ && line != "(exit)") {
            close_cmd(t)
            if (line ~ / done in [0-9.]+s$/) {
                printf "%9.0f  = %s (wall %.0f ms)\n", t * 1000, line, (t - stage_t) * 1000
                mark = "after " line; mark_t = t
            } else {
                if (mark_t != "") printf "  %7.0f  (berth, locally: %s)\n", (t - mark_t) * 1000, mark
                printf "%9.0f  %s\n", t * 1000, line
                stage_t = t; mark = "start of " line; mark_t = t
            }
        } else if (line == "(exit)") {
            close_cmd(t)
            if (mark_t != "") printf "  %7.0f  (berth, locally: %s)\n", (t - mark_t) * 1000, mark
            total = t
        }
    }
    END {
        printf "total %.0f ms; SSH commands per host:", total * 1000
        for (h in count) printf " %s=%d", h, count[h]
        printf "\n"
    }' "$raw"
exit "$status"
