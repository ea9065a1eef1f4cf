# BEGIN xsproto
# Added by 'xsproto install-host'; 'xsproto install-host --uninstall' removes this block.
# /etc/init.d/xendomains saves every guest with 'xen save' at host shutdown and restores
# it with 'xen restore' at boot. A guest holding extra pages granted by xsproto restores
# only if the grant travels in its image and is applied before its memory: so those verbs
# go through xsproto (which runs stock xl), everything else to /usr/sbin/xen as before.
xen() {
    case "$1" in
        save|restore|migrate)
            if [ -x @XSPROTO@ ]; then
                @XSPROTO@ "$@"
                return
            fi ;;
    esac
    command xen "$@"
}
# END xsproto
