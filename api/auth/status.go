package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"sigs.k8s.io/yaml"
)

// unauthorized is kube-apiserver's answer to missing or bad credentials.
func unauthorized() metav1.Status {
	return apierrors.NewUnauthorized("Unauthorized").Status()
}

func badRequest(msg string) metav1.Status { return apierrors.NewBadRequest(msg).Status() }

// forbidden is kube-apiserver's 403, worded as its forbiddenMessage:
// `pods "x" is forbidden: User "u" cannot create resource "pods" in API
// group "" in the namespace "ns"`, with the reason appended.
func forbidden(at *Attributes, reason string) metav1.Status {
	msg := forbiddenMessage(at)
	if reason != "" {
		msg += ": " + reason
	}
	gr := schema.GroupResource{Group: at.APIGroup, Resource: at.Resource}
	return apierrors.NewForbidden(gr, at.Name, errors.New(msg)).Status()
}

func forbiddenMessage(at *Attributes) string {
	user := ""
	if at.User != nil {
		user = at.User.Name
	}
	if !at.ResourceRequest {
		return fmt.Sprintf("User %q cannot %s path %q", user, at.Verb, at.Path)
	}
	res := at.Resource
	if at.Subresource != "" {
		res += "/" + at.Subresource
	}
	if at.Namespace != "" {
		return fmt.Sprintf("User %q cannot %s resource %q in API group %q in the namespace %q", user, at.Verb, res, at.APIGroup, at.Namespace)
	}
	return fmt.Sprintf("User %q cannot %s resource %q in API group %q at the cluster scope", user, at.Verb, res, at.APIGroup)
}

// writeStatus writes st as JSON (every Kubernetes client reads it).
func writeStatus(w http.ResponseWriter, st metav1.Status) {
	st.Kind, st.APIVersion = "Status", "v1"
	if st.Status == "" {
		st.Status = metav1.StatusFailure
	}
	body, _ := json.Marshal(&st)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(int(st.Code))
	_, _ = w.Write(append(body, '\n'))
}

// nodeDecoder reads the name of a Node from a create body.
var nodeDecoder = func() interface {
	Decode(data []byte) (string, error)
} {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		panic(err)
	}
	return nodeBodyDecoder{pb: protobuf.NewSerializer(s, s)}
}()

type nodeBodyDecoder struct{ pb *protobuf.Serializer }

var protobufMagic = []byte{0x6b, 0x38, 0x73, 0x00} // "k8s\x00"

// Decode returns metadata.name of a Node in protobuf, JSON or YAML.
func (d nodeBodyDecoder) Decode(data []byte) (string, error) {
	if bytes.HasPrefix(data, protobufMagic) {
		obj, _, err := d.pb.Decode(data, nil, &corev1.Node{})
		if err != nil {
			return "", err
		}
		n, ok := obj.(*corev1.Node)
		if !ok {
			return "", fmt.Errorf("body is a %T, not a Node", obj)
		}
		return n.Name, nil
	}
	var m struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return "", err
	}
	return m.Metadata.Name, nil
}
