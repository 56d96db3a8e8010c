package api

import (
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
)

// scheme knows every type the API serves or accepts in a request body
// (objects, lists, Status, DeleteOptions, Binding, Eviction, Scale,
// SelfSubjectAccessReview; TokenRequest and SelfSubjectReview come with
// authentication/v1 in tokenrequest.go).
var (
	scheme = newScheme()
	codecs = serializer.NewCodecFactory(scheme)

	// strictJSON reports unknown and duplicate fields (fieldValidation=Strict|Warn);
	// laxJSON ignores them (fieldValidation=Ignore). Both are case-sensitive, as
	// kube-apiserver's decoder is.
	strictJSON = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Strict: true})
	laxJSON    = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{})
	strictYAML = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	laxYAML    = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true})
	yamlOut    = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true})
	jsonOut    = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{})
)

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(corev1.AddToScheme(s))
	utilruntime.Must(appsv1.AddToScheme(s))
	utilruntime.Must(policyv1.AddToScheme(s))
	utilruntime.Must(autoscalingv1.AddToScheme(s))
	utilruntime.Must(rbacv1.AddToScheme(s))
	utilruntime.Must(authorizationv1.AddToScheme(s))
	utilruntime.Must(metav1.AddMetaToScheme(s))
	s.AddUnversionedTypes(metav1.SchemeGroupVersion,
		&metav1.ListOptions{}, &metav1.GetOptions{}, &metav1.DeleteOptions{},
		&metav1.CreateOptions{}, &metav1.UpdateOptions{}, &metav1.PatchOptions{})
	return s
}

var coreV1 = schema.GroupVersion{Version: "v1"}

// paramCodec decodes ListOptions, GetOptions and DeleteOptions from a query.
var paramCodec = runtime.NewParameterCodec(scheme)
