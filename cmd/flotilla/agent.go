package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/agent/hollow"
)

type agentOptions struct {
	nodeName   string
	bind       string
	gossipPort int
	join       []string
	labels     string
	maxPods    int
	runtime    string
	server     string
}

// newAgentCommand is `flotilla agent`. Only --runtime=fake exists so far: a
// hollow node (package agent/hollow) for scale tests and benchmarks. The
// flag names are issue 5's, so the real agent grows this command.
func newAgentCommand(logs *logOptions) *cobra.Command {
	o := &agentOptions{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node agent (only --runtime=fake for now: a hollow node for scale tests)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			switch o.runtime {
			case "fake":
			case "containerd":
				return errors.New("--runtime=containerd: not implemented yet: only --runtime=fake")
			default:
				return fmt.Errorf("--runtime %q: want containerd or fake", o.runtime)
			}
			if o.nodeName == "" {
				return errors.New("--node-name is required (the hostname could not be read)")
			}
			if o.server == "" {
				return errors.New("--server is required (the API address, host:port)")
			}
			labels, err := parseLabels(o.labels)
			if err != nil {
				return err
			}
			cs, err := kubernetes.NewForConfig(&rest.Config{
				Host:      "http://" + o.server,
				UserAgent: "flotilla-agent/" + o.nodeName,
				QPS:       50,
				Burst:     100,
			})
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			node, err := hollow.Start(ctx, hollow.Config{
				Name:       o.nodeName,
				Client:     cs,
				GossipBind: o.bind,
				GossipPort: o.gossipPort,
				Join:       o.join,
				Labels:     labels,
				Pods:       o.maxPods,
				Logger:     log,
			})
			if err != nil {
				return err
			}
			<-ctx.Done()
			// A stopped agent leaves the pool: the node is going away on
			// purpose, not failing.
			node.Leave()
			return nil
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.nodeName, "node-name", host, "Node name and gossip member name")
	f.StringVar(&o.bind, "bind", "0.0.0.0", "address to bind gossip to; also the Node's InternalIP")
	f.IntVar(&o.gossipPort, "gossip-port", 7946, "gossip port (TCP and UDP); 0 picks a free one")
	f.StringArrayVar(&o.join, "join", nil, "gossip address (host:port) of any server or agent to join; repeatable")
	f.StringVar(&o.labels, "labels", "", "extra Node labels, k=v[,k=v...]")
	f.IntVar(&o.maxPods, "max-pods", 110, "pod capacity")
	f.StringVar(&o.runtime, "runtime", "containerd", "container runtime: containerd or fake (no containers: a hollow node for scale tests)")
	f.StringVar(&o.server, "server", "", "API server address (host:port, plain HTTP)")
	return cmd
}

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels %q: want k=v[,k=v...]", s)
		}
		out[k] = v
	}
	return out, nil
}
