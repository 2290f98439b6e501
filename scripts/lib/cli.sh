# Sourced by the scripts (before they cd anywhere): what they share on the
# command line. A script's --help is the comment block at its top.
_kvpager_script=$(realpath "$0")
print_help() { sed -n '2,/^[^#]/{/^#/p}' "$_kvpager_script"; }
# For a script that takes no arguments but -h/--help.
no_arguments() {
  case "${1:-}" in
    "") ;;
    -h|--help) print_help; exit 0 ;;
    *) echo "$(basename "$0"): unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
}
