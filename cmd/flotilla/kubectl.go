package main

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
)

// defaultKubeconfigs are where `flotilla kubectl` looks for a kubeconfig when
// neither $KUBECONFIG nor --kubeconfig is given: the default data dir, then
// the one `make run` uses. As k3s does, the embedded kubectl works on a
// master without any setup.
var defaultKubeconfigs = []string{
	"/var/lib/flotilla/kubeconfig",
	"data/kubeconfig",
}

func newKubectlCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "kubectl",
		Short:              "Run the embedded kubectl, preconfigured for this cluster",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Getenv("KUBECONFIG") == "" && !hasKubeconfigFlag(args) {
				for _, p := range defaultKubeconfigs {
					if abs, err := filepath.Abs(p); err == nil && readable(abs) {
						os.Setenv("KUBECONFIG", abs)
						break
					}
				}
			}
			k := kubectlcmd.NewDefaultKubectlCommand()
			k.SetArgs(args)
			k.SetContext(cmd.Context())
			return k.Execute()
		},
	}
}

func hasKubeconfigFlag(args []string) bool {
	for _, a := range args {
		if a == "--kubeconfig" || len(a) > 13 && a[:13] == "--kubeconfig=" {
			return true
		}
	}
	return false
}

func readable(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	f.Close()
	return true
}
