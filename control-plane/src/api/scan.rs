//! `portcullis.v1.ScanService`: import scan reports (admins), read and list results (viewers),
//! delete them (admins). A report is parsed and normalised by the domain core before anything
//! is stored; a refused report answers InvalidArgument with the parser's reason.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::info;

use portcullis_proto::v1::{
    DeleteImageScanRequest, DeleteImageScanResponse, GetImageScanRequest, ImageScan,
    ImportReportRequest, ListImageScansRequest, ListImageScansResponse,
    scan_service_server::ScanService,
};
use portcullis_scan::{self as scan, ReportFormat};

use super::{
    paging,
    scan_proto::{self, ScanFilter},
};
use crate::{
    auth::{Access, Authenticator},
    store::Store,
};

const LISTING: &str = "ListImageScans";

/// Room for an `ImportReportRequest`'s other fields around a report at the size limit.
pub const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;

/// The scan service; reports are parsed on a blocking thread, as large ones take a while.
pub struct ScanApi {
    store: Arc<Store>,
    auth: Arc<Authenticator>,
    max_report_bytes: usize,
}

impl ScanApi {
    /// `max_report_bytes` bounds an imported report (`--max-report-bytes`).
    pub fn new(store: Arc<Store>, auth: Arc<Authenticator>, max_report_bytes: usize) -> Self {
        Self {
            store,
            auth,
            max_report_bytes,
        }
    }
}

/// The report's format as named, or detected from its top-level keys.
fn report_format(name: &str, report: &[u8]) -> Result<ReportFormat, Status> {
    if !name.is_empty() {
        return ReportFormat::from_name(name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "format: {name:?} is not one of {}",
                ReportFormat::NAMES.join(", ")
            ))
        });
    }
    if let Some(format) = scan::detect_format(report) {
        return Ok(format);
    }
    // Undetected: let the Trivy parser say what is wrong (not JSON, or not a known tool).
    Ok(ReportFormat::Trivy)
}

fn required_image(image: &str) -> Result<&str, Status> {
    match image.trim() {
        "" => Err(Status::invalid_argument("image: required")),
        image => Ok(image),
    }
}

#[tonic::async_trait]
impl ScanService for ScanApi {
    async fn import_report(
        &self,
        request: Request<ImportReportRequest>,
    ) -> Result<Response<ImageScan>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let request = request.into_inner();
        let limit = self.max_report_bytes;
        if request.report.len() > limit {
            return Err(Status::invalid_argument(format!(
                "report: {}",
                scan::ScanError::TooLarge {
                    size: request.report.len(),
                    limit,
                }
            )));
        }
        let format = report_format(&request.format, &request.report)?;
        let image = Some(request.image.trim()).filter(|i| !i.is_empty());
        // A slice of the request's buffer (prost decodes `report` without copying it).
        let report = request.report;
        let image = image.map(str::to_owned);
        let scan = tokio::task::spawn_blocking(move || {
            let parsed = scan::parse_report(format, &report, image.as_deref(), limit)?;
            // The report's bytes go before its findings are encoded: the two largest forms of
            // a report never coexist with a third.
            drop(report);
            Ok(scan_proto::new_scan(parsed))
        })
        .await
        .map_err(|e| Status::internal(format!("parsing task: {e}")))?
        .map_err(|error: scan::ScanError| Status::invalid_argument(format!("report: {error}")))?;
        let vulnerabilities = scan.vulnerability_count;
        let stored = self.store.put_scan(scan).await?;
        info!(
            scan = %stored.id,
            format = format.name(),
            vulnerabilities,
            revision = stored.revision,
            operator = %operator.name,
            "Scan imported"
        );
        Ok(Response::new(stored))
    }

    async fn get_image_scan(
        &self,
        request: Request<GetImageScanRequest>,
    ) -> Result<Response<ImageScan>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let request = request.into_inner();
        let image = required_image(&request.image)?;
        self.store
            .find_scan(image)
            .await?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no scan of image {image:?}")))
    }

    async fn list_image_scans(
        &self,
        request: Request<ListImageScansRequest>,
    ) -> Result<Response<ListImageScansResponse>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let request = request.into_inner();
        let filter = ScanFilter::new(
            &request.repository,
            &request.min_severity,
            request.has_malware,
            &request.vulnerability,
        )?;
        let after = paging::decode(LISTING, &request.page_token)?;
        let page = self
            .store
            .list_scans(
                after.as_deref(),
                paging::page_size(request.page_size),
                |scan| filter.matches(scan),
            )
            .await?;
        let next_page_token = match (page.more, page.items.last()) {
            (true, Some(last)) => paging::encode(LISTING, &last.id),
            _ => String::new(),
        };
        let scans = page
            .items
            .into_iter()
            .map(|mut scan| {
                scan.vulnerabilities = Vec::new();
                scan
            })
            .collect();
        Ok(Response::new(ListImageScansResponse {
            scans,
            next_page_token,
        }))
    }

    async fn delete_image_scan(
        &self,
        request: Request<DeleteImageScanRequest>,
    ) -> Result<Response<DeleteImageScanResponse>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let request = request.into_inner();
        let image = required_image(&request.image)?;
        let (id, revision) = self.store.delete_scan(image).await?;
        info!(scan = %id, revision, operator = %operator.name, "Scan deleted");
        Ok(Response::new(DeleteImageScanResponse { id, revision }))
    }
}
