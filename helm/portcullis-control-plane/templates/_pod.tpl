{{/*
The control plane's pod, for the StatefulSet (sled) and the Deployment (PostgreSQL) alike. With
PostgreSQL the data dir is an emptyDir (the store is the database; TLS and the admin token come
from Secrets), the database's URL, password file and CA come from its Secrets, and the replicas
prefer different nodes.
*/}}
{{- define "portcullis-control-plane.podTemplate" -}}
{{- $tlsSource := include "portcullis-control-plane.tlsSource" . }}
{{- $postgres := eq (include "portcullis-control-plane.store" .) "postgres" }}
{{- $persistence := .Values.persistence }}
{{- $db := .Values.database }}
metadata:
  labels:
    {{- include "portcullis-control-plane.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- /* Restart on a changed inline certificate (the files are read at start), and on the
         chart's certificate issued for other names. */}}
  {{- $annotations := deepCopy (.Values.podAnnotations | default dict) }}
  {{- if eq $tlsSource "inline" }}
  {{- $_ := set $annotations "checksum/tls" (printf "%s%s" .Values.tls.cert .Values.tls.key | sha256sum) }}
  {{- else if eq $tlsSource "chart" }}
  {{- $_ := set $annotations "checksum/tls" (include "portcullis-control-plane.chartTlsNames" . | sha256sum) }}
  {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "portcullis-control-plane.serviceAccountName" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ add .Values.shutdownTimeout 10 }}
  containers:
    - name: control-plane
      image: {{ include "portcullis-control-plane.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["portcullis-control-plane"]
      args:
        - serve
        - {{ printf "--log-format=%s" .Values.logFormat | quote }}
        - --data-dir=/var/lib/portcullis
        - --listen=0.0.0.0:8443
        - --admin-listen=0.0.0.0:9090
        {{- if $tlsSource }}
        - --tls-cert=/etc/portcullis/tls/tls.crt
        - --tls-key=/etc/portcullis/tls/tls.key
        {{- else }}
        # Generated certificate: also valid for the Service's names and tls.extraSans.
        - {{ printf "--tls-san=%s" (include "portcullis-control-plane.serviceSans" .) | quote }}
        {{- end }}
        # The bootstrap admin token is read from the Secret (not generated in the data dir).
        - --admin-token-file=/etc/portcullis/admin-token/token
        {{- if .Values.tokensFile.existingSecret }}
        - --tokens-file=/etc/portcullis/tokens/tokens.yaml
        {{- end }}
        - {{ printf "--changelog-keep=%v" (int64 .Values.changelogKeep) | quote }}
        - {{ printf "--heartbeat-interval=%v" (int64 .Values.heartbeatInterval) | quote }}
        - {{ printf "--shutdown-timeout=%v" (int64 .Values.shutdownTimeout) | quote }}
        {{- if and $postgres $db.url }}
        - --database-password-file=/etc/portcullis/database/password
        {{- end }}
        {{- if and $postgres $db.caSecret }}
        - --database-ca=/etc/portcullis/database-ca/ca.crt
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- if or $postgres .Values.logFilter .Values.extraEnv }}
      env:
        {{- if $postgres }}
        # The whole URL from the Secret, or the URL without its password from the values (the
        # password is in the file above).
        - name: PORTCULLIS_DATABASE_URL
          {{- if $db.url }}
          value: {{ $db.url | quote }}
          {{- else }}
          valueFrom:
            secretKeyRef:
              name: {{ $db.existingSecret }}
              key: {{ $db.urlKey }}
          {{- end }}
        {{- end }}
        {{- with .Values.logFilter }}
        - name: PORTCULLIS_LOG
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      ports:
        - name: grpc
          containerPort: 8443
          protocol: TCP
        - name: admin
          containerPort: 9090
          protocol: TCP
      startupProbe:
        {{- toYaml .Values.startupProbe | nindent 8 }}
      livenessProbe:
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /var/lib/portcullis
        - name: admin-token
          mountPath: /etc/portcullis/admin-token
          readOnly: true
        {{- if $tlsSource }}
        - name: tls
          mountPath: /etc/portcullis/tls
          readOnly: true
        {{- end }}
        {{- if .Values.tokensFile.existingSecret }}
        - name: tokens
          mountPath: /etc/portcullis/tokens
          readOnly: true
        {{- end }}
        {{- if and $postgres $db.url }}
        - name: database
          mountPath: /etc/portcullis/database
          readOnly: true
        {{- end }}
        {{- if and $postgres $db.caSecret }}
        - name: database-ca
          mountPath: /etc/portcullis/database-ca
          readOnly: true
        {{- end }}
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: admin-token
      secret:
        secretName: {{ include "portcullis-control-plane.adminTokenSecretName" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.adminToken.key }}
            path: token
    {{- if $tlsSource }}
    - name: tls
      secret:
        secretName: {{ include "portcullis-control-plane.tlsSecretName" . }}
        defaultMode: 0440
        items:
          - key: tls.crt
            path: tls.crt
          - key: tls.key
            path: tls.key
    {{- end }}
    {{- if .Values.tokensFile.existingSecret }}
    - name: tokens
      secret:
        secretName: {{ .Values.tokensFile.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.tokensFile.key }}
            path: tokens.yaml
    {{- end }}
    {{- if and $postgres $db.url }}
    - name: database
      secret:
        secretName: {{ $db.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ $db.passwordKey }}
            path: password
    {{- end }}
    {{- if and $postgres $db.caSecret }}
    - name: database-ca
      secret:
        secretName: {{ $db.caSecret }}
        defaultMode: 0440
        items:
          - key: {{ $db.caKey }}
            path: ca.crt
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if $postgres }}
    # Nothing to keep: the store is the database, TLS and the admin token are Secrets.
    - name: data
      emptyDir: {}
    {{- else if not $persistence.enabled }}
    - name: data
      emptyDir: {}
    {{- else if $persistence.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ $persistence.existingClaim }}
    {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if $postgres }}
  # Spread the replicas over nodes when possible, so one node going away leaves one serving.
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "portcullis-control-plane.selectorLabels" . | nindent 16 }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
