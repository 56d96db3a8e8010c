package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// namespaceRecheck is how soon a namespace whose content is still going
// (pods in their grace period, objects with finalizers) is looked at again.
const namespaceRecheck = time.Second

// namespaceController empties namespaces being deleted: it deletes every
// namespaced object the API serves (found by discovery) in the namespace,
// waits until they are gone, then removes the "kubernetes" finalizer through
// the finalize subresource so the API deletes the namespace.
type namespaceController struct {
	*base
	log      *slog.Logger
	nsLister corelisters.NamespaceLister
	loop     *loop[string]

	mu        sync.Mutex
	resources []nsResource // from discovery, once it succeeded
}

// nsResource is one namespaced resource: its API path prefix and plural.
type nsResource struct {
	prefix           string // /api/v1 or /apis/<group>/<version>
	plural           string
	deleteCollection bool
}

func newNamespaceController(b *base) *namespaceController {
	c := &namespaceController{base: b, log: b.logger(Namespace)}
	c.loop = newLoop(Namespace, c.log, c.sync)
	inf := b.factory.Core().V1().Namespaces().Informer()
	c.nsLister = corelisters.NewNamespaceLister(inf.GetIndexer())
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.loop.enqueueObj,
		UpdateFunc: func(_, cur any) { c.loop.enqueueObj(cur) },
	})
	return c
}

func (c *namespaceController) run(ctx context.Context) { c.loop.run(ctx, c.cfg.Workers) }

func (c *namespaceController) sync(ctx context.Context, name string) error {
	ns, err := c.nsLister.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ns.DeletionTimestamp == nil || !hasFinalizer(ns.Spec.Finalizers, corev1.FinalizerKubernetes) {
		return nil
	}
	resources, err := c.discover(ctx)
	if err != nil {
		return err
	}
	remaining, err := c.deleteContent(ctx, name, resources)
	if err != nil {
		return err
	}
	if len(remaining) > 0 {
		c.log.Debug("namespace content remaining", "namespace", name, "resources", remaining)
		c.loop.queue.AddAfter(name, namespaceRecheck)
		return nil
	}
	cp := ns.DeepCopy()
	var fins []corev1.FinalizerName
	for _, f := range cp.Spec.Finalizers {
		if f != corev1.FinalizerKubernetes {
			fins = append(fins, f)
		}
	}
	cp.Spec.Finalizers = fins
	_, err = c.client.CoreV1().Namespaces().Finalize(ctx, cp, metav1.UpdateOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("finalize namespace %s: %w", name, err)
	}
	c.log.Info("namespace emptied and finalized", "namespace", name)
	return nil
}

func hasFinalizer(list []corev1.FinalizerName, f corev1.FinalizerName) bool {
	for _, v := range list {
		if v == f {
			return true
		}
	}
	return false
}

// discover lists the namespaced resources that can be listed and deleted.
// Served resources do not change while a master runs, so one successful
// discovery serves the Manager's lifetime.
func (c *namespaceController) discover(ctx context.Context) ([]nsResource, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.resources != nil {
		return c.resources, nil
	}
	lists, err := c.client.Discovery().ServerPreferredNamespacedResources()
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) || len(lists) == 0 {
		return nil, fmt.Errorf("discover namespaced resources: %w", err)
	}
	var out []nsResource
	for _, l := range lists {
		prefix := "/apis/" + l.GroupVersion
		if l.GroupVersion == "v1" {
			prefix = "/api/v1"
		}
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") || !hasVerb(r.Verbs, "list") || !hasVerb(r.Verbs, "delete") && !hasVerb(r.Verbs, "deletecollection") {
				continue
			}
			out = append(out, nsResource{prefix: prefix, plural: r.Name, deleteCollection: hasVerb(r.Verbs, "deletecollection")})
		}
	}
	if err == nil {
		c.resources = out
	}
	return out, nil
}

func hasVerb(verbs metav1.Verbs, v string) bool {
	for _, x := range verbs {
		if x == v {
			return true
		}
	}
	return false
}

// deleteContent deletes what is left in the namespace and returns the
// resources that still have objects there.
func (c *namespaceController) deleteContent(ctx context.Context, ns string, resources []nsResource) ([]string, error) {
	rc := c.client.Discovery().RESTClient()
	var remaining []string
	var errs []error
	for _, r := range resources {
		path := r.prefix + "/namespaces/" + ns + "/" + r.plural
		names, err := listNames(ctx, rc.Get().AbsPath(path))
		if apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s in %s: %w", r.plural, ns, err))
			continue
		}
		if len(names) == 0 {
			continue
		}
		if r.deleteCollection {
			err = rc.Delete().AbsPath(path).Param("propagationPolicy", string(metav1.DeletePropagationBackground)).Do(ctx).Error()
		} else {
			for _, n := range names {
				if e := rc.Delete().AbsPath(path, n).Param("propagationPolicy", string(metav1.DeletePropagationBackground)).Do(ctx).Error(); e != nil && !apierrors.IsNotFound(e) {
					err = e
				}
			}
		}
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s in %s: %w", r.plural, ns, err))
		}
		// Check again: most objects go at once; pods in their grace period
		// and objects with finalizers stay a while.
		names, err = listNames(ctx, rc.Get().AbsPath(path))
		if err == nil && len(names) == 0 {
			continue
		}
		remaining = append(remaining, r.plural)
	}
	return remaining, errors.Join(errs...)
}

// listNames lists the names of the objects a list request returns.
func listNames(ctx context.Context, req interface {
	DoRaw(context.Context) ([]byte, error)
}) ([]string, error) {
	data, err := req.DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("decode list: %w", err)
	}
	names := make([]string, len(list.Items))
	for i, it := range list.Items {
		names[i] = it.Metadata.Name
	}
	return names, nil
}
