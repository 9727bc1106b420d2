#!/bin/sh
# Runs as /scenario.sh inside the L2 guest (our VMM's guest): reports what the guest sees,
# one "L2-REPORT key=value" line each, then ends the VM the way the arch does it.
echo "L2-REPORT arch=$(uname -m)"
echo "L2-REPORT nproc=$(nproc)"
echo "L2-REPORT memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
echo "L2-REPORT cmdline=$(cat /proc/cmdline)"
echo "L2-REPORT done"
# x86: no ACPI, so power-off cannot reach the VMM; reboot=k makes reboot pulse the i8042
# reset line, which ends our VMM with status 0. aarch64: PSCI SYSTEM_OFF.
case "$(uname -m)" in
    x86_64) reboot -f ;;
    *) poweroff -f ;;
esac
