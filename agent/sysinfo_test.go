package agent

import "testing"

func TestParseSysInfo(t *testing.T) {
	if got := memTotal([]byte("MemTotal:       24576000 kB\nMemFree: 1 kB\n")); got != 24576000*1024 {
		t.Fatalf("memTotal = %d", got)
	}
	if got := memTotal([]byte("garbage")); got != 0 {
		t.Fatalf("memTotal of garbage = %d", got)
	}
	if got := osRelease([]byte("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"), "PRETTY_NAME"); got != "Debian GNU/Linux 12 (bookworm)" {
		t.Fatalf("osRelease = %q", got)
	}
	si := readSysInfo()
	if si.cpus <= 0 || si.memoryBytes <= 0 || si.kernel == "" {
		t.Fatalf("readSysInfo on this machine = %+v", si)
	}
}
