# bash completion for xsproto(8): generated from xsproto's argument parser by
# 'python -m tools.completion'. Do not edit.
_xsproto() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local cmd='' i opts takes
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --xenstore|--log-level) ((i++)) ;;
            -*) ;;
            *) cmd=${COMP_WORDS[i]}; break ;;
        esac
    done
    case $cmd in
        '') opts='-h --help --version --xenstore --log-level -v --verbose -q --quiet'; takes='--xenstore --log-level'
            [[ $cur == -* ]] || opts='watcher reconcile request withdraw status save restore migrate migrate-send migrate-receive inspect-image install-host' ;;
        watcher) opts='-h --help --policy --check-config'; takes=--policy ;;
        reconcile) opts='-h --help --adopt --reapply --domid --policy --json'; takes='--domid --policy' ;;
        request) opts='-h --help --domid --timeout --dm-domid --json --pages --reason'; takes='--domid --timeout --dm-domid --pages --reason' ;;
        withdraw) opts='-h --help --domid --timeout --dm-domid --json'; takes='--domid --timeout --dm-domid' ;;
        status) opts='-h --help --domid --follow --json'; takes=--domid ;;
        save) opts='-h --help'; takes='' ;;
        restore) opts='-h --help --policy --over-policy'; takes=--policy ;;
        migrate) opts='-h --help -s --ssh -C -e -p --debug --policy --over-policy'; takes='-s --ssh -C --policy' ;;
        migrate-send) opts='-h --help --source-domid --grant'; takes='--source-domid --grant' ;;
        migrate-receive) opts='-h --help -e -p -d --policy --over-policy'; takes=--policy ;;
        inspect-image) opts='-h --help --json'; takes='' ;;
        install-host) opts='-h --help --root --uninstall --json'; takes=--root ;;
        *) return ;;
    esac
    case "$cmd $prev" in
        ' --log-level') COMPREPLY=($(compgen -W 'DEBUG INFO WARNING ERROR' -- "$cur")); return ;;
    esac
    # An option's value, or a positional argument: bash's default (file names).
    [[ " $takes " == *" $prev "* ]] && return
    if [[ -z $cmd || $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    fi
}
complete -o default -F _xsproto xsproto
