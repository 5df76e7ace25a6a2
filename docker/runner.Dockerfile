# The Conveyor runner and CLI, with the locked Python dependencies.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY runner ./runner
COPY migrations ./migrations
COPY sql ./sql
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .
RUN useradd --system --no-create-home conveyor
USER conveyor
ENTRYPOINT ["conveyor"]
CMD ["run"]
