package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"flotilla/agent/server"
)

// newImageCommand is `flotilla image`: loading images into nodes' runtimes
// and listing them, through the API's nodes/proxy and each node's agent,
// so it works from any machine with a kubeconfig (no registry needed).
func newImageCommand() *cobra.Command {
	var kubeconfig string
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Load images into nodes and list the images they have",
	}
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "path to the kubeconfig (default: $KUBECONFIG, then "+strings.Join(defaultKubeconfigs, ", ")+", then ~/.kube/config)")
	cmd.AddCommand(newImageImportCommand(&kubeconfig), newImageListCommand(&kubeconfig))
	return cmd
}

func newImageImportCommand(kubeconfig *string) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "import FILE",
		Short: "Load an OCI or Docker image archive (tar) into the named node, or into every Ready node",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			// Fail before contacting anyone when the file cannot be read.
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			f.Close()
			cs, err := kubeconfigClient(*kubeconfig, "flotilla-image")
			if err != nil {
				return err
			}
			nodes, err := imageNodes(cmd.Context(), cs, node)
			if err != nil {
				return err
			}
			results := forEachNode(nodes, func(n string) (*server.ImageList, error) {
				return importTo(cmd.Context(), cs, n, file)
			})
			failed := 0
			for _, r := range results {
				if r.err != nil {
					failed++
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: import failed: %v\n", r.node, r.err)
					continue
				}
				refs := make([]string, 0, len(r.list.Images))
				for _, i := range r.list.Images {
					refs = append(refs, i.Ref)
				}
				if len(refs) == 0 {
					refs = []string{"(no named images)"}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: imported %s\n", r.node, strings.Join(refs, ", "))
			}
			if failed > 0 {
				return fmt.Errorf("import failed on %d of %d nodes", failed, len(results))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node to load the image into (default: every Ready node)")
	return cmd
}

func newImageListCommand(kubeconfig *string) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the images of the named node, or of every Ready node",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, err := kubeconfigClient(*kubeconfig, "flotilla-image")
			if err != nil {
				return err
			}
			nodes, err := imageNodes(cmd.Context(), cs, node)
			if err != nil {
				return err
			}
			results := forEachNode(nodes, func(n string) (*server.ImageList, error) {
				return listOn(cmd.Context(), cs, n)
			})
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "NODE\tIMAGE\tID\tSIZE")
			failed := 0
			for _, r := range results {
				if r.err != nil {
					failed++
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: list failed: %v\n", r.node, r.err)
					continue
				}
				for _, i := range r.list.Images {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.node, i.Ref, shortID(i.ID), humanSize(i.Size))
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("listing failed on %d of %d nodes", failed, len(results))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node to list (default: every Ready node)")
	return cmd
}

// kubeconfigClient builds a clientset from the kubeconfig as `flotilla
// kubectl` finds it: --kubeconfig, $KUBECONFIG, the data dirs, then
// ~/.kube/config.
func kubeconfigClient(kubeconfig, userAgent string) (kubernetes.Interface, error) {
	cfg, err := kubeconfigREST(kubeconfig, userAgent)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// kubeconfigREST loads the client configuration of kubeconfig (or of the
// default places) as kubectl would.
func kubeconfigREST(kubeconfig, userAgent string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	switch {
	case kubeconfig != "":
		rules.ExplicitPath = kubeconfig
	case os.Getenv("KUBECONFIG") == "":
		for _, p := range defaultKubeconfigs {
			if abs, err := filepath.Abs(p); err == nil && readable(abs) {
				rules.ExplicitPath = abs
				break
			}
		}
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = userAgent + "/" + Version
	return cfg, nil
}

// imageNodes is the named node, or every Ready node by name.
func imageNodes(ctx context.Context, cs kubernetes.Interface, node string) ([]string, error) {
	if node != "" {
		if _, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err != nil {
			return nil, err
		}
		return []string{node}, nil
	}
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []string
	for _, n := range list.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				out = append(out, n.Name)
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no Ready nodes")
	}
	sort.Strings(out)
	return out, nil
}

type nodeResult struct {
	node string
	list *server.ImageList
	err  error
}

// forEachNode runs f for every node, a few at a time, and returns the
// results in the nodes' order.
func forEachNode(nodes []string, f func(string) (*server.ImageList, error)) []nodeResult {
	out := make([]nodeResult, len(nodes))
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			l, err := f(n)
			out[i] = nodeResult{node: n, list: l, err: err}
		}()
	}
	wg.Wait()
	return out
}

// agentProxy is a request to path on the node's agent through the API.
func agentProxy(cs kubernetes.Interface, verb, node, path string) *rest.Request {
	return cs.CoreV1().RESTClient().Verb(verb).AbsPath("/api/v1/nodes", node, "proxy", path)
}

// importTo streams the archive to the node's agent; each node reads the
// file on its own, so one slow node does not hold the others.
func importTo(ctx context.Context, cs kubernetes.Interface, node, file string) (*server.ImageList, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return decodeImageList(agentProxy(cs, "POST", node, "images").
		SetHeader("Content-Type", "application/x-tar").
		Body(io.Reader(f)).
		Do(ctx))
}

func listOn(ctx context.Context, cs kubernetes.Interface, node string) (*server.ImageList, error) {
	return decodeImageList(agentProxy(cs, "GET", node, "images").Do(ctx))
}

// decodeImageList reads the agent's answer. Error() rather than Raw()'s
// error: it decodes the Status, so the API's or the agent's message shows.
func decodeImageList(res rest.Result) (*server.ImageList, error) {
	if err := res.Error(); err != nil {
		return nil, err
	}
	raw, err := res.Raw()
	if err != nil {
		return nil, err
	}
	var l server.ImageList
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, fmt.Errorf("decode the agent's answer: %w", err)
	}
	return &l, nil
}

// shortID is the first 12 hex digits of a digest, as docker and crictl
// print image IDs.
func shortID(id string) string {
	_, hex, ok := strings.Cut(id, ":")
	if !ok {
		hex = id
	}
	if len(hex) > 12 {
		hex = hex[:12]
	}
	return hex
}

// humanSize prints bytes in decimal units, as docker and crictl do.
func humanSize(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	f := float64(n)
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	return fmt.Sprintf("%.3g%s", f, units[i])
}
