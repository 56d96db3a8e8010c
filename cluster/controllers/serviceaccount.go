package controllers

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// defaultServiceAccount is the ServiceAccount every namespace has.
const defaultServiceAccount = "default"

// serviceAccountController makes sure every active namespace has a
// "default" ServiceAccount, recreating it when deleted. (Its token comes
// with the security issue; this controller only makes the object exist.)
type serviceAccountController struct {
	*base
	log      *slog.Logger
	nsLister corelisters.NamespaceLister
	saLister corelisters.ServiceAccountLister
	loop     *loop[string]
}

func newServiceAccountController(b *base) *serviceAccountController {
	c := &serviceAccountController{base: b, log: b.logger(ServiceAccount)}
	c.loop = newLoop(ServiceAccount, c.log, c.sync)
	nsInf := b.factory.Core().V1().Namespaces().Informer()
	saInf := b.factory.Core().V1().ServiceAccounts().Informer()
	c.nsLister = corelisters.NewNamespaceLister(nsInf.GetIndexer())
	c.saLister = corelisters.NewServiceAccountLister(saInf.GetIndexer())
	nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.loop.enqueueObj,
		UpdateFunc: func(_, cur any) { c.loop.enqueueObj(cur) },
	})
	saInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			if sa, ok := tombstone(obj).(*corev1.ServiceAccount); ok && sa.Name == defaultServiceAccount {
				c.loop.add(sa.Namespace)
			}
		},
	})
	return c
}

func (c *serviceAccountController) run(ctx context.Context) { c.loop.run(ctx, c.cfg.Workers) }

func (c *serviceAccountController) sync(ctx context.Context, name string) error {
	ns, err := c.nsLister.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ns.DeletionTimestamp != nil || ns.Status.Phase == corev1.NamespaceTerminating {
		return nil
	}
	if _, err := c.saLister.ServiceAccounts(name).Get(defaultServiceAccount); err == nil {
		return nil
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: defaultServiceAccount, Namespace: name}}
	_, err = c.client.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{})
	switch {
	case err == nil, apierrors.IsAlreadyExists(err), apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause), apierrors.IsNotFound(err):
		return nil
	default:
		return fmt.Errorf("create default serviceaccount in %s: %w", name, err)
	}
}
