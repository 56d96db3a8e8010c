package controllers

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// masterEndpointsPeriod is how often the default/kubernetes Endpoints are
// compared with the masters gossip reports alive (kube-apiserver's
// endpoint reconciler uses 10s). A dead master also fails dials, which
// the Service proxy moves past, so the lag costs little.
const masterEndpointsPeriod = 5 * time.Second

// masterEndpointsController keeps the Endpoints of default/kubernetes
// listing the API addresses of the live masters, so pods reach the API at
// the Service's ClusterIP, as in-cluster client-go expects. The Service
// has no selector: the endpoints controller leaves it alone.
type masterEndpointsController struct {
	*base
	log *slog.Logger
}

func newMasterEndpointsController(b *base) *masterEndpointsController {
	return &masterEndpointsController{base: b, log: b.logger(MasterEndpoints)}
}

func (c *masterEndpointsController) run(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := c.sync(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("sync default/kubernetes endpoints", "err", err)
		}
	}, masterEndpointsPeriod)
}

// masterSubsets groups master API addresses (host:port) by port, sorted,
// so equal sets compare equal.
func masterSubsets(addrs []string) []corev1.EndpointSubset {
	byPort := map[int32][]string{}
	for _, a := range addrs {
		host, p, err := net.SplitHostPort(a)
		if err != nil || net.ParseIP(host) == nil || net.ParseIP(host).IsUnspecified() {
			continue
		}
		port, err := strconv.Atoi(p)
		if err != nil || port <= 0 || port > 65535 {
			continue
		}
		if !slices.Contains(byPort[int32(port)], host) {
			byPort[int32(port)] = append(byPort[int32(port)], host)
		}
	}
	ports := make([]int32, 0, len(byPort))
	for p := range byPort {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	var out []corev1.EndpointSubset
	for _, p := range ports {
		hosts := byPort[p]
		slices.Sort(hosts)
		ss := corev1.EndpointSubset{Ports: []corev1.EndpointPort{{Name: "https", Port: p, Protocol: corev1.ProtocolTCP}}}
		for _, h := range hosts {
			ss.Addresses = append(ss.Addresses, corev1.EndpointAddress{IP: h})
		}
		out = append(out, ss)
	}
	return out
}

func (c *masterEndpointsController) sync(ctx context.Context) error {
	want := masterSubsets(c.cfg.Masters())
	if len(want) == 0 {
		// Gossip sees no master (this one included): a transient view,
		// not a reason to take the API away from every pod.
		return nil
	}
	eps := c.client.CoreV1().Endpoints(metav1.NamespaceDefault)
	cur, err := eps.Get(ctx, "kubernetes", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = eps.Create(ctx, &corev1.Endpoints{
			ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: metav1.NamespaceDefault,
				Labels: map[string]string{"endpointslice.kubernetes.io/skip-mirror": "true"}},
			Subsets: want,
		}, metav1.CreateOptions{})
		if err == nil {
			c.log.Info("default/kubernetes endpoints created", "subsets", want)
		}
		return err
	}
	if err != nil {
		return err
	}
	if apiequality.Semantic.DeepEqual(cur.Subsets, want) {
		return nil
	}
	cur = cur.DeepCopy()
	cur.Subsets = want
	if _, err := eps.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return err
	}
	c.log.Info("default/kubernetes endpoints updated", "subsets", want)
	return nil
}
