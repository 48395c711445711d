"""Reports from files: runs read back (`runs`), the comparison table (`comparison`), the
paper's tables (`tables`), figures (`plots`) and report.md (`report`). Never imports train.
"""
