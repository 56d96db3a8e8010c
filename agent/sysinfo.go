package agent

import (
	"bufio"
	"bytes"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// sysInfo is what the Node reports about the machine.
type sysInfo struct {
	cpus        int
	memoryBytes int64
	kernel      string
	osImage     string
	machineID   string
	bootID      string
}

func readSysInfo() sysInfo {
	si := sysInfo{cpus: goruntime.NumCPU(), osImage: "Linux"}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		si.memoryBytes = memTotal(b)
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		si.kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		if v := osRelease(b, "PRETTY_NAME"); v != "" {
			si.osImage = v
		}
	}
	if b, err := os.ReadFile("/etc/machine-id"); err == nil {
		si.machineID = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		si.bootID = strings.TrimSpace(string(b))
	}
	return si
}

// memTotal parses MemTotal (kB) from /proc/meminfo.
func memTotal(meminfo []byte) int64 {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}

// osRelease reads one KEY="value" of /etc/os-release.
func osRelease(b []byte, key string) string {
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && k == key {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}
