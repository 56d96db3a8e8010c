// Package eventsink gives the API's clients (the controllers, the agent) an
// event sink they can close: client-go's broadcaster cannot be waited for,
// and an event written after its component stopped would race that
// component's shutdown.
package eventsink
