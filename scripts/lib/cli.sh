# Sourced by the scripts (before they cd anywhere): what they share on the
# command line. A script's --help is the comment block at its top (the lines
# after #! up to the first line that is not a comment), printed without the
# leading "# ": usage, options and exit statuses belong there.
_kvpager_script=$(realpath "$0")
_kvpager_name=$(basename "$0")
print_help() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$_kvpager_script"; }
# Bad usage: says what was wrong, in the script's name, and exits 2.
usage_error() { echo "$_kvpager_name: $* (see --help)" >&2; exit 2; }
# For an option that takes a value, before reading $2:
#   --time) want_value "$@"; TIME=$2; shift 2 ;;
want_value() { (($# >= 2)) || usage_error "$1 wants a value"; }
# A whole number above 0 for an option, or bad usage naming it:
#   want_positive --time "$TIME" seconds
want_positive() {
  [[ $2 =~ ^0*[1-9][0-9]{0,8}$ ]] || usage_error "$1 wants a whole number${3:+ of $3} above 0, got '$2'"
}
# For a script that passes its arguments on (to kvpager, a benchmark): -h or
# --help anywhere among them is its own help, not the program's.
help_anywhere() {
  local a
  for a in "$@"; do
    case "$a" in -h|--help) print_help; exit 0 ;; esac
  done
}
# For a script that takes no arguments but -h/--help.
no_arguments() {
  case "${1:-}" in
    "") ;;
    -h|--help) print_help; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
}
# Whether this machine has a GPU: nvidia-smi lists one.
have_gpu() { nvidia-smi -L >/dev/null 2>&1; }
# Without a GPU: says so and exits with the given status, before anything is
# built or written.
require_gpu() {
  have_gpu || { echo "$_kvpager_name: no GPU here (nvidia-smi finds none): nothing run" >&2; exit "$1"; }
}
