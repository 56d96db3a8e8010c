package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "v0.1.0-dev"

type logOptions struct {
	level  string
	format string
}

func (o *logOptions) bind(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&o.level, "log-level", "info", "log level: debug, info, warn, error")
	cmd.PersistentFlags().StringVar(&o.format, "log-format", "text", "log format: text or json")
}

// logger builds the process logger; every component gets a child of it.
func (o *logOptions) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.level)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(o.format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", o.format)
	}
}

func newRootCommand() *cobra.Command {
	logs := &logOptions{}
	root := &cobra.Command{
		Use:           "flotilla",
		Short:         "A Kubernetes-compatible container orchestrator in one binary",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
	}
	logs.bind(root)
	root.AddCommand(
		newServerCommand(logs),
		newOperatorCommand(),
		newKubectlCommand(),
		newKubeconfigCommand(),
		newAgentCommand(logs),
		newImageCommand(),
		newProxyCommand(logs),
		newTokenCommand(),
	)
	return root
}
