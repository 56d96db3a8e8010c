package controllers

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

const (
	// rootCAConfigMap is the ConfigMap every namespace gets, and its key:
	// the names ServiceAccount admission projects into every pod and
	// rest.InClusterConfig reads as ca.crt.
	rootCAConfigMap = "kube-root-ca.crt"
	rootCAKey       = "ca.crt"
	// rootCADescriptionKey and rootCADescription: kube's annotation on the
	// ConfigMap, telling readers what it is for.
	rootCADescriptionKey = "kubernetes.io/description"
	rootCADescription    = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."
)

// rootCAController is kube's root-ca-cert-publisher: every active namespace
// has the ConfigMap kube-root-ca.crt holding exactly Config.RootCA under
// ca.crt. A deleted one is recreated, an edited one put back (other keys
// are dropped, other metadata kept), so a pod's projected ca.crt is always
// the cluster CA.
//
// Its ConfigMap informer is its own, filtered to that one name: caching
// every ConfigMap of the cluster for one of them would cost the leader
// memory in proportion to all user data.
type rootCAController struct {
	*base
	log       *slog.Logger
	ca        string
	nsLister  corelisters.NamespaceLister
	cmLister  corelisters.ConfigMapLister
	cmFactory informers.SharedInformerFactory
	cmSynced  cache.InformerSynced
	loop      *loop[string]
}

func newRootCAController(b *base) *rootCAController {
	c := &rootCAController{base: b, log: b.logger(RootCAPublisher), ca: string(b.cfg.RootCA)}
	c.loop = newLoop(RootCAPublisher, c.log, c.sync)
	nsInf := b.factory.Core().V1().Namespaces().Informer()
	c.nsLister = corelisters.NewNamespaceLister(nsInf.GetIndexer())
	nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.loop.enqueueObj,
		UpdateFunc: func(_, cur any) { c.loop.enqueueObj(cur) },
	})
	c.cmFactory = informers.NewSharedInformerFactoryWithOptions(b.client, b.cfg.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", rootCAConfigMap).String()
		}))
	cmInf := c.cmFactory.Core().V1().ConfigMaps().Informer()
	c.cmLister = corelisters.NewConfigMapLister(cmInf.GetIndexer())
	c.cmSynced = cmInf.HasSynced
	enqueueNS := func(obj any) {
		if cm, ok := tombstone(obj).(*corev1.ConfigMap); ok && cm.Name == rootCAConfigMap {
			c.loop.add(cm.Namespace)
		}
	}
	cmInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueNS,
		UpdateFunc: func(_, cur any) { enqueueNS(cur) },
		DeleteFunc: enqueueNS,
	})
	return c
}

func (c *rootCAController) run(ctx context.Context) {
	c.cmFactory.Start(ctx.Done())
	defer c.cmFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), c.cmSynced) {
		c.loop.queue.ShutDown() // ctx ended before the cache synced
		return
	}
	c.loop.run(ctx, c.cfg.Workers)
}

func (c *rootCAController) sync(ctx context.Context, ns string) error {
	n, err := c.nsLister.Get(ns)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if n.DeletionTimestamp != nil || n.Status.Phase == corev1.NamespaceTerminating {
		return nil
	}
	cm, err := c.cmLister.ConfigMaps(ns).Get(rootCAConfigMap)
	if apierrors.IsNotFound(err) {
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: rootCAConfigMap, Namespace: ns, Annotations: map[string]string{rootCADescriptionKey: rootCADescription}},
			Data:       map[string]string{rootCAKey: c.ca},
		}
		_, err := c.client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		switch {
		case err == nil, apierrors.IsAlreadyExists(err):
			// AlreadyExists: the informer has not shown it yet; its event
			// brings the namespace back here to compare the content.
			return nil
		case apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause), apierrors.IsNotFound(err):
			return nil
		default:
			return fmt.Errorf("create %s/%s: %w", ns, rootCAConfigMap, err)
		}
	}
	if err != nil {
		return err
	}
	if c.current(cm) {
		return nil
	}
	fixed := cm.DeepCopy()
	fixed.Data = map[string]string{rootCAKey: c.ca}
	fixed.BinaryData = nil
	if fixed.Annotations == nil {
		fixed.Annotations = map[string]string{}
	}
	fixed.Annotations[rootCADescriptionKey] = rootCADescription
	if _, err := c.client.CoreV1().ConfigMaps(ns).Update(ctx, fixed, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		// NotFound: deleted meanwhile; the delete event requeues the namespace.
		return fmt.Errorf("repair %s/%s: %w", ns, rootCAConfigMap, err)
	}
	return nil
}

// current: the ConfigMap holds exactly the CA, with kube's annotation.
func (c *rootCAController) current(cm *corev1.ConfigMap) bool {
	return len(cm.Data) == 1 && cm.Data[rootCAKey] == c.ca && len(cm.BinaryData) == 0 &&
		cm.Annotations[rootCADescriptionKey] == rootCADescription
}
