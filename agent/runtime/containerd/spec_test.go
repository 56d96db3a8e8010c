package containerd

import (
	"errors"
	"slices"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"flotilla/agent/runtime"
)

func TestProcessArgs(t *testing.T) {
	img := ocispec.ImageConfig{Entrypoint: []string{"/toolbox"}, Cmd: []string{"serve"}}
	for _, tc := range []struct {
		name          string
		cfg           ocispec.ImageConfig
		command, args []string
		want          []string
		err           bool
	}{
		{"image's", img, nil, nil, []string{"/toolbox", "serve"}, false},
		{"args replace cmd", img, nil, []string{"exit", "3"}, []string{"/toolbox", "exit", "3"}, false},
		{"command replaces both", img, []string{"/bin/sh"}, nil, []string{"/bin/sh"}, false},
		{"command and args", img, []string{"/bin/sh"}, []string{"-c", "x"}, []string{"/bin/sh", "-c", "x"}, false},
		{"cmd only image", ocispec.ImageConfig{Cmd: []string{"/app"}}, nil, nil, []string{"/app"}, false},
		{"nothing at all", ocispec.ImageConfig{}, nil, nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := processArgs(tc.cfg, tc.command, tc.args)
			if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
				t.Errorf("got %q, %v; want %q (error %v)", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	good := runtime.ContainerSpec{PodUID: "u", Name: "c", Image: "i", LogPath: "/tmp/x.log"}
	if err := validate(good); err != nil {
		t.Fatalf("good spec: %v", err)
	}
	neg := int64(-1)
	for name, mutate := range map[string]func(*runtime.ContainerSpec){
		"no uid":          func(s *runtime.ContainerSpec) { s.PodUID = "" },
		"no name":         func(s *runtime.ContainerSpec) { s.Name = "" },
		"no image":        func(s *runtime.ContainerSpec) { s.Image = "" },
		"negative":        func(s *runtime.ContainerSpec) { s.Attempt = -1 },
		"relative log":    func(s *runtime.ContainerSpec) { s.LogPath = "x.log" },
		"relative mount":  func(s *runtime.ContainerSpec) { s.Mounts = []runtime.Mount{{HostPath: "a", ContainerPath: "/a"}} },
		"mount over root": func(s *runtime.ContainerSpec) { s.Mounts = []runtime.Mount{{HostPath: "/a", ContainerPath: "/"}} },
		"bad env":         func(s *runtime.ContainerSpec) { s.Env = []string{"NOEQUALS"} },
		"unknown cap":     func(s *runtime.ContainerSpec) { s.CapAdd = []string{"FLY"} },
		"negative uid":    func(s *runtime.ContainerSpec) { s.RunAsUser = &neg },
		"negative memory": func(s *runtime.ContainerSpec) { s.MemoryLimit = -1 },
		"missing netns":   func(s *runtime.ContainerSpec) { s.NetNSPath = "/run/netns/does-not-exist-here" },
	} {
		s := good
		mutate(&s)
		if err := validate(s); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: got %v, want ErrInvalidSpec", name, err)
		}
	}
}

func TestCapName(t *testing.T) {
	for in, want := range map[string]string{"net_admin": "CAP_NET_ADMIN", "CAP_SYS_TIME": "CAP_SYS_TIME", "all": "ALL"} {
		if got, err := capName(in); err != nil || got != want {
			t.Errorf("capName(%q) = %q, %v", in, got, err)
		}
	}
}

func TestContainerID(t *testing.T) {
	a := ContainerID("uid", "web", 0)
	if len(a) != 32 || a != ContainerID("uid", "web", 0) {
		t.Errorf("ContainerID not stable 32 hex: %q", a)
	}
	for _, other := range []string{ContainerID("uid", "web", 1), ContainerID("uid", "db", 0), ContainerID("uid2", "web", 0), ContainerID("uidw", "eb", 0)} {
		if other == a {
			t.Errorf("collision")
		}
	}
}

func TestStartErrorMessage(t *testing.T) {
	err := errors.New(`failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "nope": executable file not found in $PATH: unknown`)
	if got, want := startErrorMessage(err), `exec: "nope": executable file not found in $PATH`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestImportedName(t *testing.T) {
	for in, want := range map[string]string{
		"v1":                       "v1",
		"busybox:1.36":             "docker.io/library/busybox:1.36",
		"flotilla.test/toolbox:v1": "flotilla.test/toolbox:v1",
	} {
		if got := importedName(in); got != want {
			t.Errorf("importedName(%q) = %q, want %q", in, got, want)
		}
	}
}
